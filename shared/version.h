#ifndef LB_VERSION_H
#define LB_VERSION_H

#define LB_VERSION "0.2.0"

#endif
