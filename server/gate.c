/* gate.c: a FIFO counting semaphore for forwards. See gate.h. */
#include "gate.h"

#include <pthread.h>
#include <stdlib.h>

struct forward_gate {
    pthread_mutex_t lock;
    pthread_cond_t turn;
    int budget, inside;
    unsigned long next_ticket, admitted; /* tickets below admitted are in (or were) */
};

forward_gate *forward_gate_new(int threads) {
    forward_gate *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->turn, NULL);
    g->budget = threads < 1 ? 1 : threads;
    return g;
}

void forward_gate_free(forward_gate *g) {
    if (!g) return;
    pthread_cond_destroy(&g->turn);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

static int clamp(const forward_gate *g, int threads) {
    return threads < 1 ? 1 : threads > g->budget ? g->budget : threads;
}

void forward_gate_enter(forward_gate *g, int threads) {
    threads = clamp(g, threads);
    pthread_mutex_lock(&g->lock);
    unsigned long ticket = g->next_ticket++;
    /* strictly in order: the head waits for room, the others for the head */
    while (ticket != g->admitted || g->inside + threads > g->budget) pthread_cond_wait(&g->turn, &g->lock);
    g->admitted++;
    g->inside += threads;
    pthread_cond_broadcast(&g->turn); /* the next ticket may fit too */
    pthread_mutex_unlock(&g->lock);
}

void forward_gate_leave(forward_gate *g, int threads) {
    threads = clamp(g, threads);
    pthread_mutex_lock(&g->lock);
    g->inside -= threads;
    pthread_cond_broadcast(&g->turn);
    pthread_mutex_unlock(&g->lock);
}
