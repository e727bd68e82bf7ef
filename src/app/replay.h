/* replay.h - tide check FLOW --replay DATADIR:STREAM: a candidate's
 * decisions beside the live rules' over a stream's stored events, offline. */
#ifndef TIDE_REPLAY_H
#define TIDE_REPLAY_H

#include "cJSON.h"

/* argv as given after "check"; print shows a diff as tide rules diff does.
 * 0 when the replay ran, 1 when it could not, 2 on bad arguments. */
int replay_main(int argc, char **argv, void (*print)(const cJSON *r));

#endif
