/*
 * portio: byte port I/O for the e2e guests' scripts (Debian's cloud kernels have no /dev/port).
 *
 *   portio inb PORT | outb PORT VALUE ...
 *
 * Runs the operations in order in one process, so a sequence is not spread over several
 * process starts, and prints each inb's value in decimal, one per line. PORT and VALUE are
 * decimal or 0x-prefixed hexadecimal. Exits 2 on a malformed operation, 1 if the kernel refuses
 * port access. No C library (a few hundred bytes in every guest's initramfs): built with
 * cc -static -nostdlib, it makes its three system calls itself.
 */

#define SYS_WRITE 1
#define SYS_IOPL 172
#define SYS_EXIT 60

static long syscall1(long nr, long a)
{
	long ret;

	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a) : "rcx", "r11", "memory");
	return ret;
}

static long syscall3(long nr, long a, long b, long c)
{
	long ret;

	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return ret;
}

static unsigned char inb(unsigned short port)
{
	unsigned char value;

	__asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

static void outb(unsigned char value, unsigned short port)
{
	__asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static int equal(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

/* Parses decimal or 0x-prefixed hexadecimal no larger than max; returns -1 if malformed. */
static long parse(const char *text, long max)
{
	long value = 0;
	int base = 10;

	if (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
		base = 16;
		text += 2;
	}
	if (*text == '\0')
		return -1;
	for (; *text; text++) {
		int digit;

		if (*text >= '0' && *text <= '9')
			digit = *text - '0';
		else if (base == 16 && *text >= 'a' && *text <= 'f')
			digit = *text - 'a' + 10;
		else if (base == 16 && *text >= 'A' && *text <= 'F')
			digit = *text - 'A' + 10;
		else
			return -1;
		if (digit >= base)
			return -1;
		value = value * base + digit;
		if (value > max)
			return -1;
	}
	return value;
}

static void say(int fd, const char *text)
{
	long n = 0;

	while (text[n])
		n++;
	syscall3(SYS_WRITE, fd, (long)text, n);
}

static void print_byte(unsigned char value)
{
	char text[5];
	int n = 0;

	if (value >= 100)
		text[n++] = '0' + value / 100;
	if (value >= 10)
		text[n++] = '0' + value / 10 % 10;
	text[n++] = '0' + value % 10;
	text[n++] = '\n';
	syscall3(SYS_WRITE, 1, (long)text, n);
}

static int run(int argc, char **argv)
{
	int i = 1;

	if (syscall1(SYS_IOPL, 3) != 0) {
		say(2, "portio: the kernel refuses port access (iopl)\n");
		return 1;
	}
	while (i < argc) {
		long port = i + 1 < argc ? parse(argv[i + 1], 0xffff) : -1;

		if (equal(argv[i], "inb") && port >= 0) {
			print_byte(inb(port));
			i += 2;
			continue;
		}
		long value = i + 2 < argc ? parse(argv[i + 2], 0xff) : -1;

		if (equal(argv[i], "outb") && port >= 0 && value >= 0) {
			outb(value, port);
			i += 3;
			continue;
		}
		say(2, "portio: usage: portio inb PORT | outb PORT VALUE ...\n");
		return 2;
	}
	return 0;
}

/* The entry point: argc at the stack pointer, argv right above it. */
__attribute__((used)) static void start_c(long *stack)
{
	syscall1(SYS_EXIT, run((int)stack[0], (char **)(stack + 1)));
}

__asm__(".globl _start\n"
	"_start:\n"
	"  mov %rsp, %rdi\n"
	"  and $-16, %rsp\n"
	"  call start_c\n"
	"  hlt\n");
