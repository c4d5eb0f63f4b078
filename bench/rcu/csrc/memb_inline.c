/* liburcu memb with the read side inlined from its headers (_LGPL_SOURCE). */
#define _LGPL_SOURCE
#include <urcu/urcu-memb.h>
#define FLAVOR memb
#define NAME memb_inline
#include "urcu_flavor.h"
