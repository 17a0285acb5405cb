/* Minimal KTAP v1 writer shared by the guest helpers, so that the harness
 * parses their output with the same parser it will use for kselftests. */
#ifndef PKVM_HARNESS_KTAP_H
#define PKVM_HARNESS_KTAP_H
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int ktap_test_no;
static int ktap_failures;

static inline void ktap_header(int planned)
{
	printf("KTAP version 1\n1..%d\n", planned);
	fflush(stdout);
}

/* "# key: value" diagnostics; the harness turns "# metric: name=value unit"
 * lines into metrics and "# key=value" lines into captures. */
static inline void ktap_diag(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("# ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
}

/* reason is printed after "# " on failure (or SKIP reason when skip). */
static inline void ktap_result(int ok, int skip, const char *name, const char *reason)
{
	ktap_test_no++;
	if (!ok && !skip)
		ktap_failures++;
	printf("%s %d %s", ok || skip ? "ok" : "not ok", ktap_test_no, name);
	if (skip)
		printf(" # SKIP %s", reason ? reason : "");
	else if (!ok && reason)
		printf(" # %s", reason);
	printf("\n");
	fflush(stdout);
}

/* Prints the "Bail out! <prefix><message>" line without exiting, for
 * callers that add something (e.g. usage) before they exit. */
static inline void ktap_vbail_line(const char *prefix, const char *fmt, va_list ap)
{
	printf("Bail out! %s", prefix);
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
}

/* The environment is unusable (no device, a setup ioctl failed): the
 * harness reports this as an infrastructure ERROR, not a FAIL. Exit 2. */
static inline __attribute__((noreturn, format(printf, 1, 2))) void ktap_bail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ktap_vbail_line("", fmt, ap);
	va_end(ap);
	exit(2);
}

static inline int ktap_exit_code(void)
{
	return ktap_failures ? 1 : 0;
}
#endif
