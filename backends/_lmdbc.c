/*
 * arrowflow.backends._lmdbc: batch operations on an LMDB environment, for the lmdb backend.
 *
 * The Python binding (py-lmdb) costs about 0.9 us per key of a read-modify-write: a call,
 * argument parsing and a bytes object per key and per value. This module takes a whole
 * batch as two buffers, the encoded rows and their int64 offsets (arrowflow's row codec
 * layout, the same as an Arrow large_binary array), and loops over it in C with one cursor
 * inside one transaction, the GIL released. Nothing here knows the row encoding.
 *
 * Every method is one transaction: a write either commits whole or is aborted whole (then
 * MapFullError tells the caller to grow the map and retry). No transaction outlives a
 * call, so the map can be resized between calls. An Env is used by one thread at a time.
 *
 * LMDB itself is vendored in _vendor/lmdb (OpenLDAP Public License 2.8).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "lmdb.h"

static PyObject *LmdbError;    /* any LMDB failure */
static PyObject *MapFullError; /* MDB_MAP_FULL: the transaction was aborted, grow and retry */
static PyObject *ValueWidthError; /* get_fixed found a value of another width: a damaged store */

typedef struct {
    PyObject_HEAD
    MDB_env *env;
    int readonly;
} EnvObject;

static PyObject *
raise_rc(int rc, const char *what)
{
    PyErr_Format(rc == MDB_MAP_FULL ? MapFullError : LmdbError, "%s: %s", what, mdb_strerror(rc));
    return NULL;
}

static int
check_open(EnvObject *self)
{
    if (self->env == NULL) {
        PyErr_SetString(LmdbError, "the environment is closed");
        return -1;
    }
    return 0;
}

/* A batch of rows given as (data, offsets): row i is data[offsets[i]:offsets[i+1]]. */
typedef struct {
    Py_buffer data;
    Py_buffer offsets;
    const char *bytes;
    const int64_t *off;
    Py_ssize_t n;
} Rows;

static void
rows_release(Rows *rows)
{
    if (rows->data.obj != NULL)
        PyBuffer_Release(&rows->data);
    if (rows->offsets.obj != NULL)
        PyBuffer_Release(&rows->offsets);
}

/* Check the layout once, so that the loops need no bounds checks. */
static int
rows_check(Rows *rows, const char *what)
{
    Py_ssize_t i;
    if (rows->offsets.len % 8 != 0 || rows->offsets.len < 8) {
        PyErr_Format(PyExc_ValueError, "%s: offsets must be int64 with at least one entry", what);
        return -1;
    }
    rows->bytes = (const char *)rows->data.buf;
    rows->off = (const int64_t *)rows->offsets.buf;
    rows->n = rows->offsets.len / 8 - 1;
    for (i = 0; i < rows->n; i++) {
        if (rows->off[i] < 0 || rows->off[i] > rows->off[i + 1]) {
            PyErr_Format(PyExc_ValueError, "%s: offsets are not increasing at row %zd", what, i);
            return -1;
        }
    }
    if (rows->off[rows->n] > rows->data.len) {
        PyErr_Format(PyExc_ValueError, "%s: offsets run past the data", what);
        return -1;
    }
    return 0;
}

static inline MDB_val
row(const Rows *rows, Py_ssize_t i)
{
    MDB_val val;
    val.mv_size = (size_t)(rows->off[i + 1] - rows->off[i]);
    val.mv_data = (void *)(rows->bytes + rows->off[i]);
    return val;
}

/* ------------------------------------------------------------------------------ Env */

static int
Env_init(EnvObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "map_size", "readonly", "subdir", "lock", "max_dbs", NULL};
    const char *path;
    Py_ssize_t map_size = 0;
    int readonly = 0, subdir = 1, lock = 1, max_dbs = 2, rc;
    unsigned int flags = MDB_NOTLS | MDB_NORDAHEAD;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s|npppi", kwlist, &path, &map_size, &readonly,
                                     &subdir, &lock, &max_dbs))
        return -1;
    if (self->env != NULL) {
        PyErr_SetString(LmdbError, "the environment is already open");
        return -1;
    }
    if (readonly)
        flags |= MDB_RDONLY;
    else  /* dirty pages live in the file map, not the heap; durability comes from snapshots */
        flags |= MDB_WRITEMAP | MDB_NOSYNC | MDB_NOMETASYNC | MDB_NOMEMINIT;
    if (!subdir)
        flags |= MDB_NOSUBDIR;
    if (!lock)
        flags |= MDB_NOLOCK;
    if ((rc = mdb_env_create(&self->env)) != 0) {
        self->env = NULL;
        raise_rc(rc, "mdb_env_create");
        return -1;
    }
    if ((map_size > 0 && (rc = mdb_env_set_mapsize(self->env, (size_t)map_size)) != 0)
        || (rc = mdb_env_set_maxdbs(self->env, (MDB_dbi)max_dbs)) != 0
        || (rc = mdb_env_open(self->env, path, flags, 0644)) != 0) {
        mdb_env_close(self->env);
        self->env = NULL;
        PyErr_Format(LmdbError, "%s: %s", path, mdb_strerror(rc));
        return -1;
    }
    self->readonly = readonly;
    return 0;
}

static void
Env_dealloc(EnvObject *self)
{
    if (self->env != NULL)
        mdb_env_close(self->env);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Env_close(EnvObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->env != NULL) {
        mdb_env_close(self->env);
        self->env = NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Env_open_db(EnvObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "create", NULL};
    const char *name;
    int create = 1, rc;
    MDB_txn *txn;
    MDB_dbi dbi;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y|p", kwlist, &name, &create) || check_open(self))
        return NULL;
    create = create && !self->readonly;
    if ((rc = mdb_txn_begin(self->env, NULL, create ? 0 : MDB_RDONLY, &txn)) != 0)
        return raise_rc(rc, "mdb_txn_begin");
    if ((rc = mdb_dbi_open(txn, name, create ? MDB_CREATE : 0, &dbi)) != 0) {
        mdb_txn_abort(txn);
        return raise_rc(rc, name);
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        return raise_rc(rc, "mdb_txn_commit");
    return PyLong_FromUnsignedLong(dbi);
}

static PyObject *
Env_set_mapsize(EnvObject *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    int rc;
    if ((size == -1 && PyErr_Occurred()) || check_open(self))
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "the map size must not be negative");
        return NULL;
    }
    if ((rc = mdb_env_set_mapsize(self->env, (size_t)size)) != 0)
        return raise_rc(rc, "mdb_env_set_mapsize");
    Py_RETURN_NONE;
}

static PyObject *
Env_copyfd(EnvObject *self, PyObject *arg)
{
    int fd = (int)PyLong_AsLong(arg), rc;
    if ((fd == -1 && PyErr_Occurred()) || check_open(self))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = mdb_env_copyfd2(self->env, fd, MDB_CP_COMPACT);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return raise_rc(rc, "mdb_env_copyfd2");
    Py_RETURN_NONE;
}

static PyObject *
Env_count(EnvObject *self, PyObject *arg)
{
    unsigned long dbi = PyLong_AsUnsignedLong(arg);
    MDB_txn *txn;
    MDB_stat stat;
    int rc;
    if (PyErr_Occurred() || check_open(self))
        return NULL;
    if ((rc = mdb_txn_begin(self->env, NULL, MDB_RDONLY, &txn)) != 0)
        return raise_rc(rc, "mdb_txn_begin");
    rc = mdb_stat(txn, (MDB_dbi)dbi, &stat);
    mdb_txn_abort(txn);
    if (rc != 0)
        return raise_rc(rc, "mdb_stat");
    return PyLong_FromSize_t(stat.ms_entries);
}

static PyObject *
Env_info(EnvObject *self, PyObject *Py_UNUSED(ignored))
{
    MDB_envinfo info;
    MDB_stat stat;
    int rc;
    if (check_open(self))
        return NULL;
    if ((rc = mdb_env_info(self->env, &info)) != 0 || (rc = mdb_env_stat(self->env, &stat)) != 0)
        return raise_rc(rc, "mdb_env_info");
    return Py_BuildValue("{s:n,s:n,s:I}", "map_size", (Py_ssize_t)info.me_mapsize, "last_pgno",
                         (Py_ssize_t)info.me_last_pgno, "psize", stat.ms_psize);
}

static PyObject *
Env_clear(EnvObject *self, PyObject *arg)
{
    unsigned long dbi = PyLong_AsUnsignedLong(arg);
    MDB_txn *txn;
    int rc;
    if (PyErr_Occurred() || check_open(self))
        return NULL;
    if ((rc = mdb_txn_begin(self->env, NULL, 0, &txn)) != 0)
        return raise_rc(rc, "mdb_txn_begin");
    if ((rc = mdb_drop(txn, (MDB_dbi)dbi, 0)) != 0) {
        mdb_txn_abort(txn);
        return raise_rc(rc, "mdb_drop");
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        return raise_rc(rc, "mdb_txn_commit");
    Py_RETURN_NONE;
}

/* get_fixed(dbi, keys, offsets, width, missing) -> bytes of n * width: each key's value,
 * ``missing`` (one byte, repeated) for a key not held. A held value of another width is
 * an error: the store is damaged or was written with another schema. */
static PyObject *
Env_get_fixed(EnvObject *self, PyObject *args)
{
    unsigned long dbi;
    Py_ssize_t width, i, bad = -1;
    unsigned char missing;
    int rc = 0;
    size_t bad_size = 0;
    Rows keys = {0};
    PyObject *out = NULL;
    MDB_txn *txn = NULL;
    MDB_cursor *cursor = NULL;

    if (!PyArg_ParseTuple(args, "ky*y*nb", &dbi, &keys.data, &keys.offsets, &width, &missing))
        return NULL;
    if (check_open(self) || rows_check(&keys, "keys"))
        goto done;
    if (width < 0 || (keys.n > 0 && width > PY_SSIZE_T_MAX / keys.n)) {
        PyErr_SetString(PyExc_ValueError, "width out of range");
        goto done;
    }
    if ((out = PyBytes_FromStringAndSize(NULL, keys.n * width)) == NULL)
        goto done;
    {
        char *dest = PyBytes_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        rc = mdb_txn_begin(self->env, NULL, MDB_RDONLY, &txn);
        if (rc == 0)
            rc = mdb_cursor_open(txn, (MDB_dbi)dbi, &cursor);
        for (i = 0; rc == 0 && i < keys.n; i++, dest += width) {
            MDB_val key = row(&keys, i), value;
            int found = mdb_cursor_get(cursor, &key, &value, MDB_SET_KEY);
            if (found == MDB_NOTFOUND) {
                memset(dest, missing, (size_t)width);
            } else if (found != 0) {
                rc = found;
            } else if (value.mv_size != (size_t)width) {
                bad = i;
                bad_size = value.mv_size;
                break;
            } else {
                memcpy(dest, value.mv_data, (size_t)width);
            }
        }
        if (cursor != NULL)
            mdb_cursor_close(cursor);
        if (txn != NULL)
            mdb_txn_abort(txn);
        Py_END_ALLOW_THREADS
    }
    if (rc != 0) {
        Py_CLEAR(out);
        raise_rc(rc, "get");
    } else if (bad >= 0) {
        Py_CLEAR(out);
        PyErr_Format(ValueWidthError, "a stored value has %zu bytes where every value has %zd", bad_size, width);
    }
done:
    rows_release(&keys);
    return out;
}

/* get_var(dbi, keys, offsets) -> (data, offsets, found): the values as data (bytes) and int64
 * offsets into it (bytes), like every batch here, and found (bytes, 1 per key held, 0 with an
 * empty value). */
static PyObject *
Env_get_var(EnvObject *self, PyObject *args)
{
    unsigned long dbi;
    Py_ssize_t i;
    int rc = 0;
    Rows keys = {0};
    PyObject *offsets = NULL, *data = NULL, *found = NULL, *result = NULL;
    MDB_val *values = NULL;
    MDB_txn *txn = NULL;
    MDB_cursor *cursor = NULL;
    size_t total = 0;

    if (!PyArg_ParseTuple(args, "ky*y*", &dbi, &keys.data, &keys.offsets))
        return NULL;
    if (check_open(self) || rows_check(&keys, "keys"))
        goto done;
    values = PyMem_RawMalloc(sizeof(MDB_val) * (size_t)(keys.n ? keys.n : 1));
    offsets = PyBytes_FromStringAndSize(NULL, (keys.n + 1) * 8);
    found = PyBytes_FromStringAndSize(NULL, keys.n);
    if (values == NULL || offsets == NULL || found == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    rc = mdb_txn_begin(self->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        rc = mdb_cursor_open(txn, (MDB_dbi)dbi, &cursor);
    if (rc == 0) {
        char *flags = PyBytes_AS_STRING(found);
        int64_t *off = (int64_t *)PyBytes_AS_STRING(offsets);
        Py_BEGIN_ALLOW_THREADS
        off[0] = 0;
        for (i = 0; rc == 0 && i < keys.n; i++) {
            MDB_val key = row(&keys, i);
            int got;
            values[i].mv_size = 0;
            values[i].mv_data = NULL;
            got = mdb_cursor_get(cursor, &key, &values[i], MDB_SET_KEY);
            if (got == MDB_NOTFOUND) {
                values[i].mv_size = 0;
                flags[i] = 0;
            } else if (got != 0) {
                values[i].mv_size = 0;
                rc = got;
            } else {
                flags[i] = 1;
            }
            total += values[i].mv_size;
            off[i + 1] = (int64_t)total;
        }
        Py_END_ALLOW_THREADS
    }
    if (rc == 0 && (data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total)) != NULL) {
        /* the values still point into the map: copy them out before the transaction ends */
        char *dest = PyBytes_AS_STRING(data);
        for (i = 0; i < keys.n; i++) {
            if (values[i].mv_size) {
                memcpy(dest, values[i].mv_data, values[i].mv_size);
                dest += values[i].mv_size;
            }
        }
        result = PyTuple_Pack(3, data, offsets, found);
    }
    if (cursor != NULL)
        mdb_cursor_close(cursor);
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc != 0)
        raise_rc(rc, "get");
done:
    PyMem_RawFree(values);
    Py_XDECREF(offsets);
    Py_XDECREF(data);
    Py_XDECREF(found);
    rows_release(&keys);
    return result;
}

/* put(dbi, keys, key_offsets, values, value_offsets): insert or replace, one transaction. */
static PyObject *
Env_put(EnvObject *self, PyObject *args)
{
    unsigned long dbi;
    Py_ssize_t i;
    int rc = 0;
    Rows keys = {0}, values = {0};
    PyObject *result = NULL;
    MDB_txn *txn = NULL;
    MDB_cursor *cursor = NULL;

    if (!PyArg_ParseTuple(args, "ky*y*y*y*", &dbi, &keys.data, &keys.offsets, &values.data, &values.offsets))
        return NULL;
    if (check_open(self) || rows_check(&keys, "keys") || rows_check(&values, "values"))
        goto done;
    if (keys.n != values.n) {
        PyErr_Format(PyExc_ValueError, "%zd keys but %zd values", keys.n, values.n);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = mdb_txn_begin(self->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_cursor_open(txn, (MDB_dbi)dbi, &cursor);
    for (i = 0; rc == 0 && i < keys.n; i++) {
        MDB_val key = row(&keys, i), value = row(&values, i);
        rc = mdb_cursor_put(cursor, &key, &value, 0);
    }
    if (cursor != NULL)
        mdb_cursor_close(cursor);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        raise_rc(rc, "put");
    else
        result = Py_NewRef(Py_None);
done:
    rows_release(&keys);
    rows_release(&values);
    return result;
}

/* delete(dbi, keys, offsets): remove the keys held (others are ignored), one transaction. */
static PyObject *
Env_delete(EnvObject *self, PyObject *args)
{
    unsigned long dbi;
    Py_ssize_t i;
    int rc = 0;
    Rows keys = {0};
    PyObject *result = NULL;
    MDB_txn *txn = NULL;

    if (!PyArg_ParseTuple(args, "ky*y*", &dbi, &keys.data, &keys.offsets))
        return NULL;
    if (check_open(self) || rows_check(&keys, "keys"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    rc = mdb_txn_begin(self->env, NULL, 0, &txn);
    for (i = 0; rc == 0 && i < keys.n; i++) {
        MDB_val key = row(&keys, i);
        rc = mdb_del(txn, (MDB_dbi)dbi, &key, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        raise_rc(rc, "delete");
    else
        result = Py_NewRef(Py_None);
done:
    rows_release(&keys);
    return result;
}

static int
below(const MDB_val *key, const char *stop, Py_ssize_t stop_len)
{
    size_t common = key->mv_size < (size_t)stop_len ? key->mv_size : (size_t)stop_len;
    int order = memcmp(key->mv_data, stop, common);
    return order < 0 || (order == 0 && key->mv_size < (size_t)stop_len);
}

static PyObject *
pack_rows(const MDB_val *vals, Py_ssize_t n)
{
    Py_ssize_t i;
    size_t total = 0;
    PyObject *offsets, *data, *pair;
    int64_t *off;
    char *dest;
    for (i = 0; i < n; i++)
        total += vals[i].mv_size;
    offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * 8);
    data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (offsets == NULL || data == NULL) {
        Py_XDECREF(offsets);
        Py_XDECREF(data);
        return NULL;
    }
    off = (int64_t *)PyBytes_AS_STRING(offsets);
    dest = PyBytes_AS_STRING(data);
    off[0] = 0;
    for (i = 0; i < n; i++) {
        if (vals[i].mv_size)
            memcpy(dest, vals[i].mv_data, vals[i].mv_size);
        dest += vals[i].mv_size;
        off[i + 1] = off[i] + (int64_t)vals[i].mv_size;
    }
    pair = PyTuple_Pack(2, data, offsets);
    Py_DECREF(offsets);
    Py_DECREF(data);
    return pair;
}

/* scan(dbi, start, stop, limit) -> ((key_data, key_offsets), (value_data, value_offsets), next)
 * The entries with start <= key < stop (stop None: to the end), at most ``limit`` of them,
 * in key order; ``next`` is the key to start the following call from, None at the end. */
static PyObject *
Env_scan(EnvObject *self, PyObject *args)
{
    unsigned long dbi;
    const char *start, *stop = NULL;
    Py_ssize_t start_len, stop_len = 0, limit, n = 0;
    int rc = 0, more = 0;
    MDB_val *keys = NULL, *values = NULL, key, value;
    MDB_txn *txn = NULL;
    MDB_cursor *cursor = NULL;
    PyObject *key_rows = NULL, *value_rows = NULL, *next = NULL, *result = NULL;

    PyObject *stop_arg;
    if (!PyArg_ParseTuple(args, "ky#On", &dbi, &start, &start_len, &stop_arg, &limit) || check_open(self))
        return NULL;
    if (stop_arg != Py_None) {
        if (!PyBytes_Check(stop_arg)) {
            PyErr_SetString(PyExc_TypeError, "stop must be bytes or None");
            return NULL;
        }
        stop = PyBytes_AS_STRING(stop_arg);
        stop_len = PyBytes_GET_SIZE(stop_arg);
    }
    if (limit < 1 || limit > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "limit must be between 1 and 2**24 entries");
        return NULL;
    }
    keys = PyMem_RawMalloc(sizeof(MDB_val) * (size_t)limit);
    values = PyMem_RawMalloc(sizeof(MDB_val) * (size_t)limit);
    if (keys == NULL || values == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    rc = mdb_txn_begin(self->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        rc = mdb_cursor_open(txn, (MDB_dbi)dbi, &cursor);
    if (rc == 0) {
        Py_BEGIN_ALLOW_THREADS
        key.mv_size = (size_t)start_len;
        key.mv_data = (void *)start;
        rc = start_len ? mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE)
                       : mdb_cursor_get(cursor, &key, &value, MDB_FIRST);
        while (rc == 0 && (stop == NULL || below(&key, stop, stop_len))) {
            if (n == limit) {
                more = 1;
                break;
            }
            keys[n] = key;
            values[n] = value;
            n++;
            rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT);
        }
        if (rc == MDB_NOTFOUND)
            rc = 0;
        Py_END_ALLOW_THREADS
    }
    if (rc != 0) {
        raise_rc(rc, "scan");
    } else if ((key_rows = pack_rows(keys, n)) != NULL && (value_rows = pack_rows(values, n)) != NULL) {
        next = more ? PyBytes_FromStringAndSize(key.mv_data, (Py_ssize_t)key.mv_size) : Py_NewRef(Py_None);
        if (next != NULL)
            result = PyTuple_Pack(3, key_rows, value_rows, next);
    }
    if (cursor != NULL)
        mdb_cursor_close(cursor);
    if (txn != NULL)
        mdb_txn_abort(txn);
done:
    PyMem_RawFree(keys);
    PyMem_RawFree(values);
    Py_XDECREF(key_rows);
    Py_XDECREF(value_rows);
    Py_XDECREF(next);
    return result;
}

static PyMethodDef Env_methods[] = {
    {"close", (PyCFunction)Env_close, METH_NOARGS, "Close the environment (idempotent)."},
    {"open_db", (PyCFunction)(void (*)(void))Env_open_db, METH_VARARGS | METH_KEYWORDS,
     "open_db(name, create=True) -> dbi of a named database."},
    {"set_mapsize", (PyCFunction)Env_set_mapsize, METH_O, "Set the map size in bytes."},
    {"copyfd", (PyCFunction)Env_copyfd, METH_O, "Write a compacted consistent copy to a file descriptor."},
    {"count", (PyCFunction)Env_count, METH_O, "count(dbi) -> entries held."},
    {"info", (PyCFunction)Env_info, METH_NOARGS, "info() -> {'map_size', 'last_pgno', 'psize'}."},
    {"clear", (PyCFunction)Env_clear, METH_O, "clear(dbi): remove every entry."},
    {"get_fixed", (PyCFunction)Env_get_fixed, METH_VARARGS,
     "get_fixed(dbi, keys, offsets, width, missing) -> bytes of len(keys) * width."},
    {"get_var", (PyCFunction)Env_get_var, METH_VARARGS,
     "get_var(dbi, keys, offsets) -> (value_data, value_offsets, found)."},
    {"put", (PyCFunction)Env_put, METH_VARARGS, "put(dbi, keys, key_offsets, values, value_offsets)."},
    {"delete", (PyCFunction)Env_delete, METH_VARARGS, "delete(dbi, keys, offsets)."},
    {"scan", (PyCFunction)Env_scan, METH_VARARGS,
     "scan(dbi, start, stop, limit) -> ((key_data, key_offsets), (value_data, value_offsets), next)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EnvType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "arrowflow.backends._lmdbc.Env",
    .tp_basicsize = sizeof(EnvObject),
    .tp_dealloc = (destructor)Env_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Env(path, map_size=0, readonly=False, subdir=True, lock=True, max_dbs=2): an LMDB environment.",
    .tp_methods = Env_methods,
    .tp_init = (initproc)Env_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_lmdbc",
    .m_doc = "Batch operations on LMDB environments for arrowflow's lmdb backend.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__lmdbc(void)
{
    PyObject *m;
    if (PyType_Ready(&EnvType) < 0 || (m = PyModule_Create(&module)) == NULL)
        return NULL;
    LmdbError = PyErr_NewException("arrowflow.backends._lmdbc.Error", NULL, NULL);
    MapFullError = PyErr_NewException("arrowflow.backends._lmdbc.MapFullError", LmdbError, NULL);
    ValueWidthError = PyErr_NewException("arrowflow.backends._lmdbc.ValueWidthError", PyExc_ValueError, NULL);
    if (LmdbError == NULL || MapFullError == NULL || ValueWidthError == NULL
        || PyModule_AddObjectRef(m, "Error", LmdbError) < 0
        || PyModule_AddObjectRef(m, "MapFullError", MapFullError) < 0
        || PyModule_AddObjectRef(m, "ValueWidthError", ValueWidthError) < 0
        || PyModule_AddObjectRef(m, "Env", (PyObject *)&EnvType) < 0
        || PyModule_AddStringConstant(m, "lmdb_version", MDB_VERSION_STRING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
