/* gate.h: the CPU budget that the models of one daemon share.
 *
 * Owns: a count of CPU threads running engine forwards, bounded by the
 * daemon's CPU limit, and the order in which workers waiting for room get
 * it: first come, first served. Every model's workers pass through the one
 * gate (repository.c), so a model with a deep queue cannot crowd out
 * another: when both have work, their workers take turns forward by
 * forward (README "Model repository", fairness). A daemon with one model
 * sized to the CPU never waits here. */
#ifndef COMROPE_GATE_H
#define COMROPE_GATE_H

typedef struct forward_gate forward_gate;

/* `threads`: how many CPU threads may run forwards at once (>= 1). NULL
 * when out of memory. */
forward_gate *forward_gate_new(int threads);
void forward_gate_free(forward_gate *g);

/* Waits for room for a forward on `threads` threads (more than the budget:
 * the whole budget), in arrival order; forward_gate_leave gives it back. */
void forward_gate_enter(forward_gate *g, int threads);
void forward_gate_leave(forward_gate *g, int threads);

#endif
