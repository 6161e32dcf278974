# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""CTC decoding cores: greedy and prefix beam search over ``[F, C]`` log-posteriors.

Both return ``(labels int32 [L], base_prob float32 [L], moves uint8 [F])`` like
:func:`edgecall.decode.greedy_ref` and run without the GIL. Class 0 is the blank.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport INFINITY, expf, log1pf
from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport free, malloc, realloc

cnp.import_array()


def greedy(const float[:, ::1] logp):
    """Best path: a base at the first frame of each run of a non-blank argmax.

    Its probability is the largest posterior of that label within the run.
    """
    cdef Py_ssize_t F = logp.shape[0], C = logp.shape[1], t, c
    moves_a = np.zeros(F, dtype=np.uint8)
    labels_a = np.empty(F, dtype=np.int32)
    probs_a = np.empty(F, dtype=np.float32)
    cdef uint8_t[::1] moves = moves_a
    cdef int32_t[::1] labels = labels_a
    cdef float[::1] probs = probs_a
    cdef Py_ssize_t n = 0
    cdef int best, prev = 0
    cdef float bv, p
    with nogil:
        for t in range(F):
            best = 0
            bv = logp[t, 0]
            for c in range(1, C):
                if logp[t, c] > bv:
                    bv = logp[t, c]
                    best = <int>c
            if best != 0:
                p = expf(bv)
                if best != prev:
                    moves[t] = 1
                    labels[n] = best
                    probs[n] = p
                    n += 1
                elif n > 0 and p > probs[n - 1]:
                    probs[n - 1] = p
            prev = best
    return labels_a[:n].copy(), probs_a[:n].copy(), moves_a


cdef inline float _lse(float a, float b) noexcept nogil:
    """log(exp(a) + exp(b)) for log-probabilities (handles -inf)."""
    if a == -INFINITY:
        return b
    if b == -INFINITY:
        return a
    if a > b:
        return a + log1pf(expf(b - a))
    return b + log1pf(expf(a - b))


cdef struct Trie:
    int32_t *parent
    int32_t *label
    int32_t *frame
    Py_ssize_t n
    Py_ssize_t cap


cdef int _trie_add(Trie *tr, int32_t parent, int32_t label, int32_t frame) noexcept nogil:
    """Append a node; returns its id or -1 when out of memory."""
    cdef Py_ssize_t cap
    cdef void *p
    if tr.n == tr.cap:
        cap = tr.cap * 2
        p = realloc(tr.parent, cap * sizeof(int32_t))
        if p == NULL:
            return -1
        tr.parent = <int32_t *>p
        p = realloc(tr.label, cap * sizeof(int32_t))
        if p == NULL:
            return -1
        tr.label = <int32_t *>p
        p = realloc(tr.frame, cap * sizeof(int32_t))
        if p == NULL:
            return -1
        tr.frame = <int32_t *>p
        tr.cap = cap
    tr.parent[tr.n] = parent
    tr.label[tr.n] = label
    tr.frame[tr.n] = frame
    tr.n += 1
    return <int>(tr.n - 1)


cdef int _beam_core(const float[:, ::1] lp, int W, Trie *tr, int *best_node) noexcept nogil:
    """Prefix beam search; leaves the best final prefix's trie node in best_node."""
    cdef Py_ssize_t F = lp.shape[0], C = lp.shape[1], t
    cdef int nb = 1, nc, i, j, c, last, k, sel, node, NC = W * <int>C
    cdef float tot, ext, bs
    cdef int *bnode = <int *>malloc(W * sizeof(int))
    cdef float *bpb = <float *>malloc(W * sizeof(float))
    cdef float *bpnb = <float *>malloc(W * sizeof(float))
    cdef int *child = <int *>malloc(W * C * sizeof(int))     # beam i + label c -> beam j
    cdef int *cnode = <int *>malloc(NC * sizeof(int))        # -1: new node (cpar, clab)
    cdef int *cpar = <int *>malloc(NC * sizeof(int))
    cdef int *clab = <int *>malloc(NC * sizeof(int))
    cdef float *cpb = <float *>malloc(NC * sizeof(float))
    cdef float *cpnb = <float *>malloc(NC * sizeof(float))
    cdef char *taken = <char *>malloc(NC)
    cdef float *cscore = <float *>malloc(NC * sizeof(float))
    cdef int rc = 0
    if (bnode == NULL or bpb == NULL or bpnb == NULL or child == NULL or cnode == NULL
            or cpar == NULL or clab == NULL or cpb == NULL or cpnb == NULL or taken == NULL
            or cscore == NULL):
        rc = -1
    else:
        bnode[0] = 0
        bpb[0] = 0.0
        bpnb[0] = -INFINITY
        for t in range(F):
            # existing beams that extend another beam by one label
            for i in range(nb * <int>C):
                child[i] = -1
            for j in range(nb):
                for i in range(nb):
                    if bnode[j] != 0 and tr.parent[bnode[j]] == bnode[i]:
                        child[i * C + tr.label[bnode[j]]] = j
            for i in range(nb):  # candidates 0..nb-1: the beams themselves
                node = bnode[i]
                last = tr.label[node] if node != 0 else -1
                cnode[i] = node
                cpb[i] = _lse(bpb[i], bpnb[i]) + lp[t, 0]
                cpnb[i] = (bpnb[i] + lp[t, last]) if last > 0 else -INFINITY
            nc = nb
            for i in range(nb):
                node = bnode[i]
                last = tr.label[node] if node != 0 else -1
                tot = _lse(bpb[i], bpnb[i])
                for c in range(1, C):
                    ext = (bpb[i] if c == last else tot) + lp[t, c]
                    j = child[i * C + c]
                    if j >= 0:
                        cpnb[j] = _lse(cpnb[j], ext)
                    else:
                        cnode[nc] = -1
                        cpar[nc] = node
                        clab[nc] = c
                        cpb[nc] = -INFINITY
                        cpnb[nc] = ext
                        nc += 1
            # keep the W best candidates (first wins ties)
            for i in range(nc):
                taken[i] = 0
                cscore[i] = _lse(cpb[i], cpnb[i])
            k = 0
            while k < W and k < nc:
                sel = -1
                bs = -INFINITY
                for i in range(nc):
                    if not taken[i] and (sel < 0 or cscore[i] > bs):
                        sel = i
                        bs = cscore[i]
                taken[sel] = 1
                node = cnode[sel]
                if node < 0:
                    node = _trie_add(tr, cpar[sel], clab[sel], <int32_t>t)
                    if node < 0:
                        rc = -1
                        break
                bnode[k] = node
                bpb[k] = cpb[sel]
                bpnb[k] = cpnb[sel]
                k += 1
            if rc:
                break
            nb = k
        best_node[0] = bnode[0]  # beams are kept sorted, best first
    free(bnode); free(bpb); free(bpnb); free(child); free(cnode)
    free(cpar); free(clab); free(cpb); free(cpnb); free(taken); free(cscore)
    return rc


def beam_search(const float[:, ::1] logp, int beam_width):
    """CTC prefix beam search keeping ``beam_width`` prefixes per frame.

    A base is emitted at the frame where its prefix was first created; its
    probability is the largest posterior of its label from that frame up to
    the next base's frame.
    """
    if beam_width < 1:
        raise ValueError("beam_width must be >= 1")
    cdef Py_ssize_t F = logp.shape[0], C = logp.shape[1]
    cdef Trie tr
    cdef int best = 0, rc, node
    cdef Py_ssize_t L, i, t, t_end
    tr.cap = 1024
    tr.n = 0
    tr.parent = <int32_t *>malloc(tr.cap * sizeof(int32_t))
    tr.label = <int32_t *>malloc(tr.cap * sizeof(int32_t))
    tr.frame = <int32_t *>malloc(tr.cap * sizeof(int32_t))
    if tr.parent == NULL or tr.label == NULL or tr.frame == NULL:
        free(tr.parent); free(tr.label); free(tr.frame)
        raise MemoryError()
    _trie_add(&tr, -1, 0, -1)  # root: the empty prefix
    with nogil:
        rc = _beam_core(logp, beam_width, &tr, &best) if F > 0 else 0
    try:
        if rc:
            raise MemoryError()
        L = 0
        node = best
        while node > 0:
            L += 1
            node = tr.parent[node]
        labels_a = np.empty(L, dtype=np.int32)
        frames_a = np.empty(L, dtype=np.int64)
        node = best
        for i in range(L - 1, -1, -1):
            labels_a[i] = tr.label[node]
            frames_a[i] = tr.frame[node]
            node = tr.parent[node]
    finally:
        free(tr.parent); free(tr.label); free(tr.frame)
    moves_a = np.zeros(F, dtype=np.uint8)
    probs_a = np.empty(L, dtype=np.float32)
    cdef float[::1] probs = probs_a
    cdef int32_t[::1] labels = labels_a
    cdef cnp.int64_t[::1] frames = frames_a
    cdef float p
    moves_a[frames_a] = 1
    for i in range(L):
        t_end = frames[i + 1] if i + 1 < L else F
        p = -INFINITY
        for t in range(frames[i], t_end):
            if logp[t, labels[i]] > p:
                p = logp[t, labels[i]]
        probs[i] = expf(p)
    return labels_a, probs_a, moves_a
