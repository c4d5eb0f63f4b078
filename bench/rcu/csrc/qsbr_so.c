/* liburcu qsbr through liburcu-qsbr.so's exported functions. */
#include <urcu/urcu-qsbr.h>
#define FLAVOR qsbr
#define NAME qsbr_so
#define QSBR 1
#include "urcu_flavor.h"
