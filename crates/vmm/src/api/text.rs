//! JSON answers as indented text for people: one `key: value` line per scalar, nested objects
//! indented under their key, list items introduced by `-`; nothing (null, an empty list) is `-`.

use serde_json::Value;

/// Renders `value` as text (ends with a newline).
pub fn render(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value, 0);
    out
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.into()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.is_empty() => Some("-".into()),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => Some(
            items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

fn write(out: &mut String, value: &Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(fields) => {
            for (key, v) in fields {
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{pad}{key}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write(out, v, indent + 1);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&format!("{pad}-\n"));
                write(out, item, indent + 1);
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_objects_lists_and_scalars() {
        let v = json!({"gsts": {"value": "0xc0000000", "set": ["TES", "RTPS"]},
                       "devices": [{"id": "disk0", "entry": null}], "on": true, "none": []});
        assert_eq!(
            render(&v),
            "devices:\n  -\n    entry: -\n    id: disk0\ngsts:\n  set: TES RTPS\n  \
             value: 0xc0000000\nnone: -\non: yes\n"
        );
    }
}
