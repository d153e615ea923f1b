/* KSVC waiter (ksvc-basic): the future a loop lane's entry resolves, and the batch that wakes its tasks.
 *
 * An asyncio Future resolved in a lane's turn schedules its waiting task with
 * loop.call_soon: a Handle per operation, run by the loop's next iteration
 * (Python code, in asyncio's own loops). A Waiter is the part of the Future
 * protocol that a Task and the front end use (asyncio accepts any object with
 * _asyncio_future_blocking, get_loop, add_done_callback, result and cancel).
 * Resolved inside a turn, it joins the turn's batch; when the turn has
 * delivered every completion of its reap, the batch wakes each waiting task
 * directly, in the task's own context, in the order the completions came.
 * Resolved anywhere else (a cancellation, a settle), it schedules its
 * callbacks with call_soon, like a Future.
 *
 * A turn called from inside a task (asyncio lets no other task step while
 * one runs) leaves its batch to call_soon.
 *
 * A waiter started as one lane entry (start, start_read, start_write,
 * start_sqe) settles its own cancellation: cancel() asks the kernel to cancel
 * the entry and the waiter stays pending until the kernel answers (at most the
 * lane's settle time). Cancelled in the kernel, or failed, it ends cancelled;
 * done anyway, it ends with the value, and the task that takes it is
 * uncancelled (as asyncio.wait_for delivers a result that won the race), so no
 * byte read or written goes unseen. A cancellation thrown into a task awaiting
 * one that is already done takes the value the same way. It is also a
 * coroutine (send, throw, close): a front end can return it as the operation
 * itself, and asyncio.create_task accepts it.
 *
 * A callback that raises an Exception is reported to the loop's exception
 * handler, as the loop does for a Handle; a BaseException (KeyboardInterrupt,
 * SystemExit) propagates out of the turn, and the callbacks not yet run are
 * scheduled with call_soon first, so no task is left asleep.
 *
 * lane_reference.py's Waiter is the pure-Python twin; the same tests run
 * against both.
 */

enum { W_PENDING, W_RESULT, W_EXCEPTION, W_CANCELLED };

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *cb0;         /* the first callback (a task's wakeup), apart: a task adds exactly one */
    PyObject *ctx0;        /* its context, or NULL */
    PyObject *more;        /* the further callbacks: a list of (fn, context), or NULL */
    PyObject *value;       /* the result, or the exception */
    PyObject *cancel_msg;
    PyObject *lane;        /* the lane whose entry resolves it, while pending: cancel() settles through it */
    PyObject *timer;       /* while settling: the loop's handle for the settle time's end */
    uint64_t token;        /* its entry in lane */
    int state;
    int blocking;          /* _asyncio_future_blocking: set while a task awaits it */
    int entry;             /* started as one lane entry: a late cancellation takes its value */
    int settling;          /* cancel() asked the kernel to cancel the entry: pending until it answers */
    PyObject *weakrefs;
} Waiter;

/* lane.c: ask the kernel to cancel w's entry; 1 and *settle_s, 0 (no such entry), -1 (error set). */
static int lane_settle_entry(PyObject *lane, uint64_t token, PyObject *w, double *settle_s);

static PyTypeObject WaiterType;

/* The batch of the turn running on this thread (turns nest: a callback may run another lane's turn). */
struct waiter_batch {
    PyObject *woken;               /* the waiters resolved in this turn, in order; NULL: none yet */
    struct waiter_batch *outer;
};
static _Thread_local struct waiter_batch *current_batch;

static PyObject *exc_cancelled, *exc_invalid_state, *fn_current_task, *str_call_soon, *str_call_exception_handler,
    *kw_context, *str_call_later, *str_cancel, *str_uncancel, *str_expire;

static int waiter_import_asyncio(void)
{
    if (exc_cancelled) return 0;
    PyObject *m = PyImport_ImportModule("asyncio.exceptions");
    if (!m) return -1;
    PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
    if (!tasks) { Py_DECREF(m); return -1; }
    exc_cancelled = PyObject_GetAttrString(m, "CancelledError");
    exc_invalid_state = PyObject_GetAttrString(m, "InvalidStateError");
    fn_current_task = PyObject_GetAttrString(tasks, "current_task");
    Py_DECREF(m);
    Py_DECREF(tasks);
    if (!exc_cancelled || !exc_invalid_state || !fn_current_task) {
        Py_CLEAR(exc_cancelled); Py_CLEAR(exc_invalid_state); Py_CLEAR(fn_current_task);
        return -1;
    }
    return 0;
}

/* loop.call_soon(fn, w, context=ctx) */
static int waiter_call_soon(Waiter *w, PyObject *fn, PyObject *ctx)
{
    PyObject *meth = PyObject_GetAttr(w->loop, str_call_soon);
    if (!meth) return -1;
    PyObject *stack[3] = {fn, (PyObject *)w, ctx};
    int with_ctx = ctx && ctx != Py_None;
    PyObject *r = PyObject_Vectorcall(meth, stack, 2, with_ctx ? kw_context : NULL);
    Py_DECREF(meth);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static int waiter_has_callbacks(const Waiter *w) { return w->cb0 || (w->more && PyList_GET_SIZE(w->more)); }

/* Take the next callback off w: 1 and (fn, ctx) (new references; ctx may be NULL), or 0 when none is left. */
static int waiter_pop(Waiter *w, PyObject **fn, PyObject **ctx)
{
    if (w->cb0) {
        *fn = w->cb0; *ctx = w->ctx0;
        w->cb0 = NULL; w->ctx0 = NULL;
        return 1;
    }
    if (w->more && PyList_GET_SIZE(w->more)) {
        PyObject *pair = PyList_GET_ITEM(w->more, 0);
        *fn = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        *ctx = Py_XNewRef(PyTuple_GET_ITEM(pair, 1));
        if (PyList_SetSlice(w->more, 0, 1, NULL) < 0) { Py_DECREF(*fn); Py_XDECREF(*ctx); return -1; }
        return 1;
    }
    return 0;
}

/* Every callback left on w through loop.call_soon (errors reported, never raised: it runs on a failure path
 * or where a Future would schedule). */
static void waiter_schedule_rest(Waiter *w)
{
    PyObject *fn, *ctx;
    int got;
    while ((got = waiter_pop(w, &fn, &ctx)) > 0) {
        if (waiter_call_soon(w, fn, ctx) < 0) PyErr_WriteUnraisable(fn);
        Py_DECREF(fn);
        Py_XDECREF(ctx);
    }
    if (got < 0) PyErr_WriteUnraisable((PyObject *)w);
}

/* w is done: into the running turn's batch, or its callbacks through call_soon. */
static int waiter_done(Waiter *w)
{
    if (!waiter_has_callbacks(w)) return 0;
    struct waiter_batch *b = current_batch;
    if (b) {
        if (!b->woken && !(b->woken = PyList_New(0))) return -1;
        return PyList_Append(b->woken, (PyObject *)w);
    }
    PyObject *fn, *ctx;
    int got;
    while ((got = waiter_pop(w, &fn, &ctx)) > 0) {
        int r = waiter_call_soon(w, fn, ctx);
        Py_DECREF(fn);
        Py_XDECREF(ctx);
        if (r < 0) return -1;
    }
    return got;
}

/* loop.call_exception_handler({"message": ..., "exception": exc, "future": w}) for a callback that raised. */
static void waiter_report(Waiter *w)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb && ev) PyException_SetTraceback(ev, tb);
    PyObject *d = Py_BuildValue("{s:s,s:O,s:O}", "message", "Exception in a callback of a KSVC lane's waiter",
                                "exception", ev ? ev : Py_None, "future", (PyObject *)w);
    PyObject *r = d ? PyObject_CallMethodOneArg(w->loop, str_call_exception_handler, d) : NULL;
    if (!r) PyErr_WriteUnraisable((PyObject *)w);
    Py_XDECREF(r);
    Py_XDECREF(d);
    Py_XDECREF(et); Py_XDECREF(ev); Py_XDECREF(tb);
}

/* Run w's callbacks now, each in its context. -1: one raised a BaseException (the rest are scheduled). */
static int waiter_wake(Waiter *w)
{
    PyObject *fn, *ctx;
    int got;
    while ((got = waiter_pop(w, &fn, &ctx)) > 0) {
        int entered = 0;
        if (ctx && ctx != Py_None) {
            if (PyContext_Enter(ctx) < 0) {   /* entered already (a task running this turn): as a Future would */
                PyErr_Clear();
                int r = waiter_call_soon(w, fn, ctx);
                Py_DECREF(fn); Py_DECREF(ctx);
                if (r < 0) return -1;
                continue;
            }
            entered = 1;
        }
        PyObject *r = PyObject_CallOneArg(fn, (PyObject *)w);
        if (entered) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            if (PyContext_Exit(ctx) < 0) PyErr_WriteUnraisable(ctx);
            PyErr_Restore(et, ev, tb);
        }
        Py_DECREF(fn);
        Py_XDECREF(ctx);
        if (r) { Py_DECREF(r); continue; }
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            waiter_schedule_rest(w);
            PyErr_Restore(et, ev, tb);
            return -1;
        }
        waiter_report(w);
    }
    return got;
}

/* 1 when a task of loop is running now (a turn called from a coroutine: asyncio lets no other task step
 * inside it), or when that cannot be told; else 0. */
static int waiter_task_running(PyObject *loop)
{
    PyObject *running = PyObject_CallOneArg(fn_current_task, loop);
    if (!running) { PyErr_Clear(); return 1; }
    int busy = running != Py_None;
    Py_DECREF(running);
    return busy;
}

static void waiter_batch_open(struct waiter_batch *b)
{
    b->woken = NULL;
    b->outer = current_batch;
    current_batch = b;
}

/* Close the turn's batch: wake every task it resolved. -1: a BaseException, to propagate (what was left is
 * scheduled with call_soon). */
static int waiter_batch_close(struct waiter_batch *b)
{
    current_batch = b->outer;
    PyObject *woken = b->woken;
    if (!woken) return 0;
    Py_ssize_t n = PyList_GET_SIZE(woken);
    PyObject *loop = NULL;   /* the loop last asked about, and whether a task of it is running */
    int busy = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Waiter *w = (Waiter *)PyList_GET_ITEM(woken, i);
        if (w->loop != loop) {
            loop = w->loop;
            busy = waiter_task_running(loop);
        }
        if (busy) {   /* the turn runs inside a task (or the check failed): the tasks wake as a Future's would */
            waiter_schedule_rest(w);
            continue;
        }
        if (waiter_wake(w) < 0) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            for (Py_ssize_t j = i + 1; j < n; j++) waiter_schedule_rest((Waiter *)PyList_GET_ITEM(woken, j));
            PyErr_Restore(et, ev, tb);
            Py_DECREF(woken);
            return -1;
        }
    }
    Py_DECREF(woken);
    return 0;
}

/* w is done: let go of its lane, and of the settle time's handle (cancelled). */
static int waiter_release(Waiter *w)
{
    Py_CLEAR(w->lane);
    PyObject *timer = w->timer;
    if (!timer) return 0;
    w->timer = NULL;
    PyObject *r = PyObject_CallMethodNoArgs(timer, str_cancel);
    Py_DECREF(timer);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* Resolve w (the lane's fast path for set_result/set_exception): 0, or -1 with InvalidStateError when it was
 * done already (cancelled first). */
static int waiter_set(Waiter *w, int state, PyObject *value)
{
    if (w->state != W_PENDING) {
        PyErr_SetString(exc_invalid_state ? exc_invalid_state : PyExc_RuntimeError, "invalid state");
        return -1;
    }
    w->state = state;
    Py_XSETREF(w->value, Py_NewRef(value));
    if (waiter_release(w) < 0) return -1;
    return waiter_done(w);
}

/* The Python surface ------------------------------------------------------------------------------- */

static PyObject *waiter_make(PyTypeObject *type, PyObject *loop)
{
    if (!exc_cancelled && waiter_import_asyncio() < 0) return NULL;
    Waiter *w = PyObject_GC_New(Waiter, type);
    if (!w) return NULL;
    w->loop = Py_NewRef(loop);
    w->cb0 = w->ctx0 = w->more = w->value = w->cancel_msg = w->lane = w->timer = NULL;
    w->token = 0;
    w->state = W_PENDING;
    w->blocking = w->entry = w->settling = 0;
    w->weakrefs = NULL;
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

static PyObject *Waiter_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *loop;
    if (kw && PyDict_GET_SIZE(kw)) { PyErr_SetString(PyExc_TypeError, "Waiter(loop)"); return NULL; }
    if (!PyArg_UnpackTuple(args, "Waiter", 1, 1, &loop)) return NULL;
    return waiter_make(type, loop);
}

/* Waiter(loop) without an argument tuple: one is made per operation. */
static PyObject *Waiter_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "Waiter(loop)");
        return NULL;
    }
    return waiter_make((PyTypeObject *)type, args[0]);
}

static int Waiter_traverse(Waiter *w, visitproc visit, void *arg)
{
    Py_VISIT(w->loop); Py_VISIT(w->cb0); Py_VISIT(w->ctx0); Py_VISIT(w->more); Py_VISIT(w->value);
    Py_VISIT(w->cancel_msg); Py_VISIT(w->lane); Py_VISIT(w->timer);
    return 0;
}

static int Waiter_clear(Waiter *w)
{
    Py_CLEAR(w->loop); Py_CLEAR(w->cb0); Py_CLEAR(w->ctx0); Py_CLEAR(w->more); Py_CLEAR(w->value);
    Py_CLEAR(w->cancel_msg); Py_CLEAR(w->lane); Py_CLEAR(w->timer);
    return 0;
}

static void Waiter_dealloc(Waiter *w)
{
    PyObject_GC_UnTrack(w);
    if (w->weakrefs) PyObject_ClearWeakRefs((PyObject *)w);
    Waiter_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *waiter_cancelled_error(Waiter *w)
{
    PyObject *e = w->cancel_msg ? PyObject_CallOneArg(exc_cancelled, w->cancel_msg) : PyObject_CallNoArgs(exc_cancelled);
    if (e) { PyErr_SetObject(exc_cancelled, e); Py_DECREF(e); }
    return NULL;
}

/* _make_cancelled_error(): what asyncio.gather takes from a cancelled child. */
static PyObject *Waiter_make_cancelled_error(Waiter *w, PyObject *Py_UNUSED(ignored))
{
    return w->cancel_msg ? PyObject_CallOneArg(exc_cancelled, w->cancel_msg) : PyObject_CallNoArgs(exc_cancelled);
}

static PyObject *Waiter_result(Waiter *w, PyObject *Py_UNUSED(ignored))
{
    switch (w->state) {
    case W_RESULT: return Py_NewRef(w->value);
    case W_EXCEPTION: PyErr_SetObject((PyObject *)Py_TYPE(w->value), w->value); return NULL;
    case W_CANCELLED: return waiter_cancelled_error(w);
    default: PyErr_SetString(exc_invalid_state, "Result is not ready."); return NULL;
    }
}

static PyObject *Waiter_exception(Waiter *w, PyObject *Py_UNUSED(ignored))
{
    switch (w->state) {
    case W_RESULT: Py_RETURN_NONE;
    case W_EXCEPTION: return Py_NewRef(w->value);
    case W_CANCELLED: return waiter_cancelled_error(w);
    default: PyErr_SetString(exc_invalid_state, "Exception is not set."); return NULL;
    }
}

static PyObject *Waiter_set_result(Waiter *w, PyObject *value)
{
    return waiter_set(w, W_RESULT, value) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *Waiter_set_exception(Waiter *w, PyObject *exc)
{
    PyObject *e = PyType_Check(exc) ? PyObject_CallNoArgs(exc) : Py_NewRef(exc);
    if (!e) return NULL;
    if (!PyExceptionInstance_Check(e) || PyErr_GivenExceptionMatches(e, PyExc_StopIteration)) {
        Py_DECREF(e);
        PyErr_SetString(PyExc_TypeError, "set_exception: an exception other than StopIteration is required");
        return NULL;
    }
    int r = waiter_set(w, W_EXCEPTION, e);
    Py_DECREF(e);
    return r < 0 ? NULL : Py_NewRef(Py_None);
}

/* Cancelled now: its callbacks run (or join the turn's batch). */
static int waiter_cancel_now(Waiter *w)
{
    w->state = W_CANCELLED;
    if (waiter_release(w) < 0) return -1;
    return waiter_done(w);
}

/* loop.call_later(secs, w._expire): the settle time's end. */
static int waiter_arm_timer(Waiter *w, double secs)
{
    PyObject *expire = PyObject_GetAttr((PyObject *)w, str_expire);
    if (!expire) return -1;
    PyObject *s = PyFloat_FromDouble(secs);
    PyObject *h = s ? PyObject_CallMethodObjArgs(w->loop, str_call_later, s, expire, NULL) : NULL;
    Py_XDECREF(s);
    Py_DECREF(expire);
    if (!h) return -1;
    Py_XSETREF(w->timer, h);
    return 0;
}

/* cancel(msg): 1 if it is cancelled or settling now, 0 if it was done already, -1 on an error. */
static int waiter_cancel(Waiter *w, PyObject *msg)
{
    if (w->state != W_PENDING) return 0;
    if (w->settling) return 1;   /* asked already: the settle goes on */
    Py_XSETREF(w->cancel_msg, msg == Py_None ? NULL : Py_NewRef(msg));
    if (w->lane) {
        double secs = 0;
        int r = lane_settle_entry(w->lane, w->token, (PyObject *)w, &secs);
        if (r < 0) return -1;
        if (r) {
            w->settling = 1;
            if (waiter_arm_timer(w, secs) < 0) return -1;
            return 1;
        }
    }
    return waiter_cancel_now(w) < 0 ? -1 : 1;
}

static PyObject *Waiter_cancel(Waiter *w, PyObject *args, PyObject *kw)
{
    static char *names[] = {"msg", NULL};
    PyObject *msg = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:cancel", names, &msg)) return NULL;
    int r = waiter_cancel(w, msg);
    if (r < 0) return NULL;
    return PyBool_FromLong(r);
}

/* The settle time passed and the kernel has not answered: cancelled (the lane keeps the entry's memory). */
static PyObject *Waiter_expire(Waiter *w, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(w->timer);
    if (w->state == W_PENDING && waiter_cancel_now(w) < 0) return NULL;
    Py_RETURN_NONE;
}

/* The task taking a value that a cancellation did not stop: it is not cancelled (as asyncio.wait_for). */
static int waiter_uncancel(Waiter *w)
{
    w->settling = 0;
    PyObject *task = PyObject_CallOneArg(fn_current_task, w->loop);
    if (!task) return -1;
    PyObject *r = task == Py_None ? Py_NewRef(Py_None) : PyObject_CallMethodNoArgs(task, str_uncancel);
    Py_DECREF(task);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* add_done_callback(fn, *, context=None): fast calls, as a task makes one per operation. */
static PyObject *Waiter_add_done_callback(Waiter *w, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1 || nkw > 1 || (nkw && !_PyUnicode_EqualToASCIIString(PyTuple_GET_ITEM(kwnames, 0), "context"))) {
        PyErr_SetString(PyExc_TypeError, "add_done_callback(fn, *, context=None)");
        return NULL;
    }
    PyObject *fn = args[0];
    PyObject *ctx = nkw ? args[1] : Py_None;
    if (ctx == Py_None) {
        ctx = PyContext_CopyCurrent();   /* as a Future does: the callback runs in the caller's context */
        if (!ctx) return NULL;
    } else {
        Py_INCREF(ctx);
    }
    if (w->state != W_PENDING) {
        int r = waiter_call_soon(w, fn, ctx);
        Py_DECREF(ctx);
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (!waiter_has_callbacks(w)) {
        w->cb0 = Py_NewRef(fn);
        w->ctx0 = ctx;
        Py_RETURN_NONE;
    }
    PyObject *pair = PyTuple_Pack(2, fn, ctx);
    Py_DECREF(ctx);
    if (!pair) return NULL;
    if (!w->more && !(w->more = PyList_New(0))) { Py_DECREF(pair); return NULL; }
    int r = PyList_Append(w->more, pair);
    Py_DECREF(pair);
    return r < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *Waiter_remove_done_callback(Waiter *w, PyObject *fn)
{
    Py_ssize_t removed = 0;
    if (w->cb0) {
        int eq = PyObject_RichCompareBool(w->cb0, fn, Py_EQ);
        if (eq < 0) return NULL;
        if (eq) { Py_CLEAR(w->cb0); Py_CLEAR(w->ctx0); removed++; }
    }
    if (w->more) {
        for (Py_ssize_t i = PyList_GET_SIZE(w->more) - 1; i >= 0; i--) {
            int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(PyList_GET_ITEM(w->more, i), 0), fn, Py_EQ);
            if (eq < 0) return NULL;
            if (eq) {
                if (PyList_SetSlice(w->more, i, i + 1, NULL) < 0) return NULL;
                removed++;
            }
        }
    }
    return PyLong_FromSsize_t(removed);
}

static PyObject *Waiter_get_loop(Waiter *w, PyObject *Py_UNUSED(ignored)) { return Py_NewRef(w->loop); }
static PyObject *Waiter_done_(Waiter *w, PyObject *Py_UNUSED(ignored)) { return PyBool_FromLong(w->state != W_PENDING); }
static PyObject *Waiter_cancelled(Waiter *w, PyObject *Py_UNUSED(ignored)) { return PyBool_FromLong(w->state == W_CANCELLED); }

/* await w: the waiter is its own iterator; it yields itself once while pending, then returns or raises.
 * am_send hands the value back without a StopIteration (the await's own protocol since 3.10). */
static PyObject *Waiter_await(Waiter *w) { return Py_NewRef(w); }

static PySendResult Waiter_send(Waiter *w, PyObject *Py_UNUSED(arg), PyObject **out)
{
    if (w->state == W_PENDING) {
        w->blocking = 1;
        *out = Py_NewRef(w);
        return PYGEN_NEXT;
    }
    if (w->settling && w->state == W_RESULT && waiter_uncancel(w) < 0) { *out = NULL; return PYGEN_ERROR; }
    *out = Waiter_result(w, NULL);
    return *out ? PYGEN_RETURN : PYGEN_ERROR;
}

static PyObject *waiter_step(PySendResult r, PyObject *v)
{
    switch (r) {
    case PYGEN_NEXT: return v;
    case PYGEN_RETURN: _PyGen_SetStopIterationValue(v); Py_DECREF(v); return NULL;
    default: return NULL;
    }
}

static PyObject *Waiter_next(Waiter *w)
{
    PyObject *v;
    return waiter_step(Waiter_send(w, Py_None, &v), v);
}

/* send(value): the coroutine protocol (the value is ignored, as a Future's iterator does). */
static PyObject *Waiter_send_method(Waiter *w, PyObject *Py_UNUSED(arg)) { return Waiter_next(w); }

/* throw(exc) / throw(type[, value[, tb]]): a CancelledError thrown into a task awaiting an entry's waiter
 * settles the entry (pending) or takes its value (done, and not failed); anything else is raised. */
static PyObject *Waiter_throw(Waiter *w, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) { PyErr_SetString(PyExc_TypeError, "throw(type[, value[, tb]])"); return NULL; }
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None, *tb = nargs > 2 ? args[2] : Py_None;
    PyObject *e;
    if (PyExceptionInstance_Check(typ)) e = Py_NewRef(typ);
    else if (PyExceptionClass_Check(typ)) e = val == Py_None ? PyObject_CallNoArgs(typ)
                                            : PyExceptionInstance_Check(val) ? Py_NewRef(val) : PyObject_CallOneArg(typ, val);
    else { PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException"); return NULL; }
    if (!e) return NULL;
    if (tb != Py_None && PyException_SetTraceback(e, tb) < 0) { Py_DECREF(e); return NULL; }
    if (w->entry && PyErr_GivenExceptionMatches(e, exc_cancelled)) {
        if (w->state == W_PENDING) {
            int r = waiter_cancel(w, Py_None);
            if (r < 0) { Py_DECREF(e); return NULL; }
            if (w->state == W_PENDING) {   /* settling: wait for the kernel's answer */
                Py_DECREF(e);
                w->blocking = 1;
                return Py_NewRef(w);
            }
        } else if (w->state == W_RESULT && !(PyLong_CheckExact(w->value) && _PyLong_Sign(w->value) < 0)) {
            Py_DECREF(e);
            if (waiter_uncancel(w) < 0) return NULL;
            PyObject *v = Py_NewRef(w->value);
            return waiter_step(PYGEN_RETURN, v);
        }
    }
    PyErr_SetObject((PyObject *)Py_TYPE(e), e);
    Py_DECREF(e);
    return NULL;
}

static PyObject *Waiter_close(Waiter *Py_UNUSED(w), PyObject *Py_UNUSED(ignored)) { Py_RETURN_NONE; }

static PyObject *Waiter_get_blocking(Waiter *w, void *Py_UNUSED(c)) { return PyBool_FromLong(w->blocking); }
static int Waiter_set_blocking(Waiter *w, PyObject *v, void *Py_UNUSED(c))
{
    if (!v) { PyErr_SetString(PyExc_AttributeError, "cannot delete _asyncio_future_blocking"); return -1; }
    int b = PyObject_IsTrue(v);
    if (b < 0) return -1;
    w->blocking = b;
    return 0;
}
static PyObject *Waiter_get_loop_attr(Waiter *w, void *Py_UNUSED(c)) { return Py_NewRef(w->loop); }
static PyObject *Waiter_get_cancel_message(Waiter *w, void *Py_UNUSED(c))
{
    return Py_NewRef(w->cancel_msg ? w->cancel_msg : Py_None);
}

static PyMethodDef Waiter_methods[] = {
    {"result", (PyCFunction)Waiter_result, METH_NOARGS, "The value, or raise the exception or CancelledError."},
    {"exception", (PyCFunction)Waiter_exception, METH_NOARGS, "The exception, or None; CancelledError if cancelled."},
    {"set_result", (PyCFunction)Waiter_set_result, METH_O, "Resolve with a value."},
    {"set_exception", (PyCFunction)Waiter_set_exception, METH_O, "Resolve with an exception."},
    {"cancel", (PyCFunction)(void (*)(void))Waiter_cancel, METH_VARARGS | METH_KEYWORDS, "cancel(msg=None) -> bool"},
    {"add_done_callback", (PyCFunction)(void (*)(void))Waiter_add_done_callback, METH_FASTCALL | METH_KEYWORDS,
     "add_done_callback(fn, *, context=None): fn(waiter) once it is done."},
    {"remove_done_callback", (PyCFunction)Waiter_remove_done_callback, METH_O, "-> how many were removed"},
    {"get_loop", (PyCFunction)Waiter_get_loop, METH_NOARGS, "The event loop it belongs to."},
    {"done", (PyCFunction)Waiter_done_, METH_NOARGS, "Resolved or cancelled."},
    {"cancelled", (PyCFunction)Waiter_cancelled, METH_NOARGS, "Cancelled."},
    {"send", (PyCFunction)Waiter_send_method, METH_O, "send(value): the coroutine protocol's step."},
    {"throw", (PyCFunction)(void (*)(void))Waiter_throw, METH_FASTCALL, "throw(exc): into the awaiting task."},
    {"close", (PyCFunction)Waiter_close, METH_NOARGS, "Nothing to close (the entry runs on)."},
    {"_expire", (PyCFunction)Waiter_expire, METH_NOARGS, "The settle time's end."},
    {"_make_cancelled_error", (PyCFunction)Waiter_make_cancelled_error, METH_NOARGS, "As asyncio.Future's."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Waiter_getset[] = {
    {"_asyncio_future_blocking", (getter)Waiter_get_blocking, (setter)Waiter_set_blocking, NULL, NULL},
    {"_loop", (getter)Waiter_get_loop_attr, NULL, NULL, NULL},
    {"_cancel_message", (getter)Waiter_get_cancel_message, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods Waiter_async = {.am_await = (unaryfunc)Waiter_await, .am_send = (sendfunc)Waiter_send};

static PyTypeObject WaiterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ksvc_basic._lane.Waiter",
    .tp_basicsize = sizeof(Waiter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Waiter(loop): the future of a loop lane's entry; woken at the end of the turn that resolves it.",
    .tp_new = Waiter_new,
    .tp_vectorcall = Waiter_vectorcall,
    .tp_dealloc = (destructor)Waiter_dealloc,
    .tp_traverse = (traverseproc)Waiter_traverse,
    .tp_clear = (inquiry)Waiter_clear,
    .tp_methods = Waiter_methods,
    .tp_getset = Waiter_getset,
    .tp_as_async = &Waiter_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Waiter_next,
    .tp_weaklistoffset = offsetof(Waiter, weakrefs),
};

static int waiter_init_module(PyObject *m)
{
    if (PyType_Ready(&WaiterType) < 0) return -1;
    str_call_soon = PyUnicode_InternFromString("call_soon");
    str_call_exception_handler = PyUnicode_InternFromString("call_exception_handler");
    kw_context = Py_BuildValue("(s)", "context");
    str_call_later = PyUnicode_InternFromString("call_later");
    str_cancel = PyUnicode_InternFromString("cancel");
    str_uncancel = PyUnicode_InternFromString("uncancel");
    str_expire = PyUnicode_InternFromString("_expire");
    if (!str_call_soon || !str_call_exception_handler || !kw_context || !str_call_later || !str_cancel
        || !str_uncancel || !str_expire) return -1;
    Py_INCREF(&WaiterType);
    return PyModule_AddObject(m, "Waiter", (PyObject *)&WaiterType);
}
