/* json_load.h: how proto/ parses a body's JSON (inside proto/ only: the
 * public API, proto.h, needs no jansson). */
#ifndef COMROPE_PROTO_JSON_LOAD_H
#define COMROPE_PROTO_JSON_LOAD_H

#include <jansson.h>

/* json_loadb, but with a meter on (proto_json_meter_begin, proto.h) the
 * body is given to jansson a KiB at a time (its callback's buffer), and
 * its input ends once the meter is over: the parse fails there, within a
 * KiB of JSON of passing max (or, for a long string, within about three
 * times its length: its text's buffer doubles). */
json_t *proto_json_loadb(const char *buf, size_t len, size_t flags, json_error_t *error);

#endif
