/* liburcu qsbr with the read side inlined from its headers (_LGPL_SOURCE). */
#define _LGPL_SOURCE
#include <urcu/urcu-qsbr.h>
#define FLAVOR qsbr
#define NAME qsbr_inline
#define QSBR 1
#include "urcu_flavor.h"
