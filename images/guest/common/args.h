/* Option splitting shared by the guest helpers' argument parsers. */
#ifndef PKVM_HARNESS_ARGS_H
#define PKVM_HARNESS_ARGS_H
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* argv[*i] is "--name=value" or "--name value": copies "--name" into name and
 * returns the value (advancing *i past a separate value), or NULL when a
 * separate value is missing; the caller reports that in its own words. */
static inline const char *opt_split(int argc, char **argv, int *i, char *name, size_t len)
{
	const char *a = argv[*i];
	const char *eq = strchr(a, '=');

	if (eq) {
		snprintf(name, len, "%.*s", (int)(eq - a), a);
		return eq + 1;
	}
	snprintf(name, len, "%s", a);
	if (*i + 1 >= argc)
		return NULL;
	return argv[++*i];
}
#endif
