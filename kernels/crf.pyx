# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""CRF decoding cores for imported dorado/bonito models: Viterbi, forward-backward, beam search.

Scores are ``[F, S*5]`` float32 (``S = 4**state_len``) in the blank-expanded
layout documented in :mod:`edgecall.crf_ref`, whose numpy functions these mirror
argument for argument (same float32 arithmetic order, same tie-breaking). The
loops run without the GIL.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport INFINITY, expf, log1pf, logf
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport free, malloc, qsort, realloc

cnp.import_array()


cdef inline float _lse2(float a, float b) noexcept nogil:
    """log(exp(a) + exp(b)) (handles -inf)."""
    if a == -INFINITY:
        return b
    if b == -INFINITY:
        return a
    if a > b:
        return a + log1pf(expf(b - a))
    return b + log1pf(expf(a - b))


cdef inline float _lse5(const float *x) noexcept nogil:
    """log-sum-exp of five values, max-shifted (all -inf gives -inf)."""
    cdef float m = x[0], s = 0.0
    cdef int i
    for i in range(1, 5):
        if x[i] > m:
            m = x[i]
    if m == -INFINITY:
        return m
    for i in range(5):
        s += expf(x[i] - m)
    return m + logf(s)


cdef inline void _shift_max(float *v, Py_ssize_t n) noexcept nogil:
    """Subtract the maximum from every element."""
    cdef float m = v[0]
    cdef Py_ssize_t i
    for i in range(1, n):
        if v[i] > m:
            m = v[i]
    for i in range(n):
        v[i] = v[i] - m


cdef inline Py_ssize_t _nstates(int state_len) noexcept nogil:
    """S = 4**state_len."""
    return (<Py_ssize_t>1) << (2 * state_len)


cdef int _check(scores, int state_len) except -1:
    """Validate the score width for ``state_len``."""
    if state_len < 1 or state_len > 7:
        raise ValueError(f"state_len must be 1..7, got {state_len}")
    cdef Py_ssize_t n = _nstates(state_len)
    if scores.shape[1] != n * 5:
        raise ValueError(f"CRF scores must be [F, {n * 5}] for state_len {state_len}, "
                         f"got {tuple(scores.shape[:2])}")
    return 0


def crf_viterbi(const float[:, ::1] scores, int state_len):
    """Best state path: ``(labels int32 [L] in 1..4, moves uint8 [F])``.

    Ties go to the stay, then to the lowest predecessor, and the final state is
    the lowest-numbered best one (``numpy.argmax`` order).
    """
    _check(scores, state_len)
    cdef Py_ssize_t F = scores.shape[0], S = _nstates(state_len), Q = S // 4, t, s
    cdef int k, best
    cdef float bv, v
    cdef float *a = <float *>malloc(S * sizeof(float))
    cdef float *b = <float *>malloc(S * sizeof(float))
    cdef float *tmp
    back_a = np.empty((F, S), dtype=np.int8)
    cdef int8_t[:, ::1] back = back_a
    if a == NULL or b == NULL:
        free(a); free(b)
        raise MemoryError()
    moves_a = np.zeros(F, dtype=np.uint8)
    labels_a = np.empty(F, dtype=np.int32)
    cdef uint8_t[::1] moves = moves_a
    cdef int32_t[::1] labels = labels_a
    cdef Py_ssize_t n = 0, st = 0
    cdef const float *row
    with nogil:
        for s in range(S):
            a[s] = 0.0
        for t in range(F):
            for s in range(S):
                row = &scores[t, s * 5]
                bv = a[s] + row[0]
                best = 0
                for k in range(4):
                    v = a[k * Q + s // 4] + row[1 + k]
                    if v > bv:
                        bv = v
                        best = k + 1
                back[t, s] = <int8_t>best
                b[s] = bv
            tmp = a
            a = b
            b = tmp
        if F > 0:
            bv = a[0]
            for s in range(1, S):
                if a[s] > bv:
                    bv = a[s]
                    st = s
        for t in range(F - 1, -1, -1):
            k = back[t, st]
            if k:
                moves[t] = 1
                labels[n] = <int32_t>(st % 4 + 1)
                n += 1
                st = (k - 1) * Q + st // 4
        # labels were collected backwards
        for t in range(n // 2):
            k = labels[t]
            labels[t] = labels[n - 1 - t]
            labels[n - 1 - t] = k
    free(a); free(b)
    return labels_a[:n].copy(), moves_a


cdef void _backward(const float[:, ::1] scores, Py_ssize_t S, float *beta) noexcept nogil:
    """Backward log-scores ``[F+1, S]`` into ``beta``, each row shifted to a maximum of 0."""
    cdef Py_ssize_t F = scores.shape[0], Q = S // 4, t, p, d
    cdef int bb
    cdef float c[5]
    cdef float *nxt
    cdef float *cur
    for p in range(S):
        beta[F * S + p] = 0.0
    for t in range(F - 1, -1, -1):
        nxt = beta + (t + 1) * S
        cur = beta + t * S
        for p in range(S):
            c[0] = scores[t, p * 5] + nxt[p]
            for bb in range(4):
                d = (p * 4 + bb) % S
                c[1 + bb] = scores[t, d * 5 + 1 + p // Q] + nxt[d]
            cur[p] = _lse5(c)
        _shift_max(cur, S)


def crf_backward(const float[:, ::1] scores, int state_len):
    """Backward log-scores ``float32 [F+1, S]`` (rows shifted to a maximum of 0)."""
    _check(scores, state_len)
    cdef Py_ssize_t F = scores.shape[0], S = _nstates(state_len)
    beta_a = np.empty((F + 1, S), dtype=np.float32)
    cdef float[:, ::1] beta = beta_a
    with nogil:
        _backward(scores, S, &beta[0, 0])
    return beta_a


def crf_forward_backward(const float[:, ::1] scores, int state_len):
    """Per-frame transition posteriors summed by what they emit: ``float32 [F, 5]``.

    Column 0: probability that frame ``t`` is a stay; column ``1+b``: that it
    moves into a state ending in base ``b``. Rows sum to 1.
    """
    _check(scores, state_len)
    cdef Py_ssize_t F = scores.shape[0], S = _nstates(state_len), Q = S // 4, t, s, j
    cdef int k
    beta_a = np.empty((F + 1, S), dtype=np.float32)
    cdef float[:, ::1] beta = beta_a
    post_a = np.zeros((F, 5), dtype=np.float32)
    cdef float[:, ::1] post = post_a
    cdef float *a = <float *>malloc(S * sizeof(float))
    cdef float *e = <float *>malloc(S * 5 * sizeof(float))
    if a == NULL or e == NULL:
        free(a); free(e)
        raise MemoryError()
    cdef float m, tot, stay, mv, nx
    cdef float bsum[4]
    cdef const float *row
    with nogil:
        _backward(scores, S, &beta[0, 0])
        for s in range(S):
            a[s] = 0.0
        for t in range(F):
            # edge scores into each state: forward + score (e), then + backward for the posterior
            m = -INFINITY
            for s in range(S):
                row = &scores[t, s * 5]
                nx = beta[t + 1, s]
                e[s * 5] = a[s] + row[0]
                for k in range(4):
                    e[s * 5 + 1 + k] = a[k * Q + s // 4] + row[1 + k]
                for j in range(5):
                    if e[s * 5 + j] + nx > m:
                        m = e[s * 5 + j] + nx
            stay = 0.0
            for k in range(4):
                bsum[k] = 0.0
            for s in range(S):
                nx = beta[t + 1, s] - m
                stay += expf(e[s * 5] + nx)
                mv = 0.0
                for k in range(4):
                    mv += expf(e[s * 5 + 1 + k] + nx)
                bsum[s % 4] += mv
            tot = stay + bsum[0] + bsum[1] + bsum[2] + bsum[3]
            post[t, 0] = stay / tot
            for k in range(4):
                post[t, 1 + k] = bsum[k] / tot
            for s in range(S):
                a[s] = _lse5(&e[s * 5])
            _shift_max(a, S)
    free(a); free(e)
    return post_a


# ---- beam search ---------------------------------------------------------------------------

cdef struct Trie:
    int32_t *parent
    int32_t *label
    int32_t *state
    int32_t *child  # [n, 4]
    int32_t *slot   # index in the current beam, or -1
    Py_ssize_t n
    Py_ssize_t cap


cdef struct Cand:
    float rank
    int32_t idx


cdef int _cand_cmp(const void *x, const void *y) noexcept nogil:
    """Order candidates by rank (descending), then index (ascending)."""
    cdef const Cand *a = <const Cand *>x
    cdef const Cand *b = <const Cand *>y
    if a.rank > b.rank:
        return -1
    if a.rank < b.rank:
        return 1
    return (a.idx > b.idx) - (a.idx < b.idx)


cdef int _grow(void **p, Py_ssize_t size) noexcept nogil:
    """realloc in place; -1 when out of memory."""
    cdef void *q = realloc(p[0], size)
    if q == NULL:
        return -1
    p[0] = q
    return 0


cdef int _trie_add(Trie *tr, int32_t parent, int32_t label, int32_t state) noexcept nogil:
    """Append a node (linked from its parent); returns its id or -1 when out of memory."""
    cdef Py_ssize_t cap, i
    if tr.n == tr.cap:
        cap = tr.cap * 2
        if (_grow(<void **>&tr.parent, cap * sizeof(int32_t))
                or _grow(<void **>&tr.label, cap * sizeof(int32_t))
                or _grow(<void **>&tr.state, cap * sizeof(int32_t))
                or _grow(<void **>&tr.slot, cap * sizeof(int32_t))
                or _grow(<void **>&tr.child, 4 * cap * sizeof(int32_t))):
            return -1
        tr.cap = cap
    i = tr.n
    tr.parent[i] = parent
    tr.label[i] = label
    tr.state[i] = state
    tr.slot[i] = -1
    tr.child[4 * i] = -1
    tr.child[4 * i + 1] = -1
    tr.child[4 * i + 2] = -1
    tr.child[4 * i + 3] = -1
    if parent >= 0:
        tr.child[4 * parent + label - 1] = <int32_t>i
    tr.n += 1
    return <int>i


cdef int _beam_core(const float[:, ::1] sc, Py_ssize_t S, int W, const float *beta,
                    Trie *tr, int32_t *bprev, uint8_t *bmove, int *best) noexcept nogil:
    """The beam search of :func:`edgecall.crf_ref.crf_beam_search`.

    Leaves the best node in ``best`` and, per frame ``t`` and kept hypothesis
    ``j``, its predecessor in ``bprev[t*W + j]`` and whether it moved in ``bmove``.
    """
    cdef Py_ssize_t F = sc.shape[0], Q = S // 4, t, s
    cdef int nh, nc, i, j, bb, c, r, node, ch, p, nsel, d
    cdef float v, top
    cdef int rc = 0
    cdef int *hyps = <int *>malloc(W * sizeof(int))
    cdef int *nhyps = <int *>malloc(W * sizeof(int))
    cdef float *fsc = <float *>malloc(W * sizeof(float))
    cdef float *cval = <float *>malloc(5 * W * sizeof(float))
    cdef int *cstate = <int *>malloc(5 * W * sizeof(int))
    cdef char *alive = <char *>malloc(5 * W)
    cdef int32_t *cprev = <int32_t *>malloc(5 * W * sizeof(int32_t))
    cdef uint8_t *cmove = <uint8_t *>malloc(5 * W)
    cdef Cand *cand = <Cand *>malloc((S if S > 5 * W else 5 * W) * sizeof(Cand))
    if (hyps == NULL or nhyps == NULL or fsc == NULL or cval == NULL or cstate == NULL
            or alive == NULL or cand == NULL or cprev == NULL or cmove == NULL):
        rc = -1
    else:
        # seeds: the W states with the best backward score (ties: lower state)
        for s in range(S):
            cand[s].rank = beta[s]
            cand[s].idx = <int32_t>s
        qsort(cand, S, sizeof(Cand), _cand_cmp)
        nh = W if W < S else <int>S
        for i in range(nh):
            hyps[i] = _trie_add(tr, -1, 0, cand[i].idx)
            fsc[i] = 0.0
            if hyps[i] < 0:
                rc = -1
        t = 0
        while t < F and rc == 0:
            for i in range(nh):
                tr.slot[hyps[i]] = i
            for i in range(nh):
                p = tr.state[hyps[i]]
                cval[5 * i] = fsc[i] + sc[t, p * 5]
                cstate[5 * i] = p
                alive[5 * i] = 1
                for bb in range(5):
                    cprev[5 * i + bb] = i
                    cmove[5 * i + bb] = bb > 0
            for i in range(nh):
                node = hyps[i]
                p = tr.state[node]
                for bb in range(4):
                    c = 5 * i + 1 + bb
                    d = <int>((p * 4 + bb) % S)
                    v = fsc[i] + sc[t, d * 5 + 1 + p // Q]
                    ch = tr.child[4 * node + bb]
                    j = tr.slot[ch] if ch >= 0 else -1
                    if j >= 0:  # same prefix and state already a hypothesis: merge
                        if v > cval[5 * j]:  # trace the better of the two paths
                            cprev[5 * j] = i
                            cmove[5 * j] = 1
                        cval[5 * j] = _lse2(cval[5 * j], v)
                        alive[c] = 0
                    else:
                        cval[c] = v
                        cstate[c] = d
                        alive[c] = 1
            nc = 0
            for c in range(5 * nh):
                if alive[c]:
                    cand[nc].rank = cval[c] + beta[(t + 1) * S + cstate[c]]
                    cand[nc].idx = c
                    nc += 1
            qsort(cand, nc, sizeof(Cand), _cand_cmp)
            nsel = W if W < nc else nc
            for i in range(nh):
                tr.slot[hyps[i]] = -1
            top = cval[cand[0].idx]
            for j in range(nsel):
                c = cand[j].idx
                i = c // 5
                r = c % 5
                node = hyps[i]
                if r:
                    ch = tr.child[4 * node + r - 1]
                    if ch < 0:
                        ch = _trie_add(tr, node, r, cstate[c])
                        if ch < 0:
                            rc = -1
                            break
                    node = ch
                nhyps[j] = node
                bprev[t * W + j] = cprev[c]
                bmove[t * W + j] = cmove[c]
                cand[j].rank = cval[c] - top  # reuse as the new forward scores
            for j in range(nsel):
                hyps[j] = nhyps[j]
                fsc[j] = cand[j].rank
            nh = nsel
            t += 1
        if rc == 0:
            best[0] = hyps[0]
    free(hyps); free(nhyps); free(fsc); free(cval); free(cstate); free(alive); free(cand)
    free(cprev); free(cmove)
    return rc


def crf_beam_search(const float[:, ::1] scores, int state_len, int beam_width):
    """Beam search for the best base sequence: ``(labels int32 [L], moves uint8 [F])``.

    See :func:`edgecall.crf_ref.crf_beam_search` for what it maximises and how moves are
    traced.
    """
    if beam_width < 1:
        raise ValueError(f"beam width must be >= 1, got {beam_width}")
    _check(scores, state_len)
    cdef Py_ssize_t F = scores.shape[0], S = _nstates(state_len), L, i
    beta_a = np.empty((F + 1, S), dtype=np.float32)
    cdef float[:, ::1] beta = beta_a
    cdef Trie tr
    cdef int best = 0, rc, node, j
    cdef Py_ssize_t t
    bprev_a = np.zeros(F * beam_width, dtype=np.int32)
    bmove_a = np.zeros(F * beam_width, dtype=np.uint8)
    cdef int32_t[::1] bprev = bprev_a
    cdef uint8_t[::1] bmove = bmove_a
    tr.cap = 1024
    tr.n = 0
    tr.parent = <int32_t *>malloc(tr.cap * sizeof(int32_t))
    tr.label = <int32_t *>malloc(tr.cap * sizeof(int32_t))
    tr.state = <int32_t *>malloc(tr.cap * sizeof(int32_t))
    tr.slot = <int32_t *>malloc(tr.cap * sizeof(int32_t))
    tr.child = <int32_t *>malloc(4 * tr.cap * sizeof(int32_t))
    try:
        if (tr.parent == NULL or tr.label == NULL or tr.state == NULL or tr.slot == NULL
                or tr.child == NULL):
            raise MemoryError()
        with nogil:
            _backward(scores, S, &beta[0, 0])
            rc = _beam_core(scores, S, beam_width, &beta[0, 0], &tr,
                            &bprev[0] if F > 0 else NULL, &bmove[0] if F > 0 else NULL, &best)
        if rc:
            raise MemoryError()
        L = 0
        node = best
        while tr.parent[node] >= 0:
            L += 1
            node = tr.parent[node]
        labels_a = np.empty(L, dtype=np.int32)
        node = best
        for i in range(L - 1, -1, -1):
            labels_a[i] = tr.label[node]
            node = tr.parent[node]
    finally:
        free(tr.parent); free(tr.label); free(tr.state); free(tr.slot); free(tr.child)
    moves_a = np.zeros(F, dtype=np.uint8)
    cdef uint8_t[::1] moves = moves_a
    j = 0
    for t in range(F - 1, -1, -1):
        moves[t] = bmove[t * beam_width + j]
        j = bprev[t * beam_width + j]
    return labels_a, moves_a
