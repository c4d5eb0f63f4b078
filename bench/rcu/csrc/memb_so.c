/* liburcu memb through liburcu-memb.so's exported functions. */
#include <urcu/urcu-memb.h>
#define FLAVOR memb
#define NAME memb_so
#include "urcu_flavor.h"
