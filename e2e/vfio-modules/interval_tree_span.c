// SPDX-License-Identifier: GPL-2.0-only
/*
 * The interval-tree span iterator, linked into iommufd.ko. Debian's kernel is built without
 * CONFIG_INTERVAL_TREE_SPAN_ITER (nothing built in selects it), so vmlinux lacks
 * interval_tree_span_iter_{first,next,advance}, which iommufd's io_pagetable and pages use.
 * e2e/prepare copies the kernel's own definitions (the CONFIG_INTERVAL_TREE_SPAN_ITER block of
 * lib/interval_tree.c) into src/interval_tree_span.inc; they are compiled here as private
 * symbols of iommufd.ko: not exported, so no other module can come to depend on this copy.
 */
#include <linux/interval_tree.h>
#include <linux/export.h>

#undef EXPORT_SYMBOL_GPL
#define EXPORT_SYMBOL_GPL(sym)
#define CONFIG_INTERVAL_TREE_SPAN_ITER 1

#include "src/interval_tree_span.inc"
