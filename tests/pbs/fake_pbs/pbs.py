"""A stand-in for PBS's `pbs` hook module, enough to run pbs/qlam_hpc_hook.py outside
pbs_mom. It follows the documented interface (pbs_module(7B), pbs_hook_attributes(7B), the
PBS Hooks Guide) and OpenPBS's own hook sources where the documents are vague:

- `pbs.event()` returns the one event of this hook run, with `type`, `hook_name`, `job`,
  `env` (execjob_launch: the job's environment, a dict), `progname`, `argv`,
  `accept()` and `reject(msg)`; both end the hook by raising SystemExit, as in PBS
  ("SystemExit: raised when accepting or rejecting an action").
- `event.job`: `id`, `euser`, `egroup`, `Job_Owner`, `Resource_List` (unset resources are
  None; walltime is a `pbs.duration`, an int of seconds), `Variable_List`, `in_ms_mom()`.
- `pbs.duration`: int subclass built from seconds or "[[HH:]MM:]SS"; str() is HH:MM:SS.
- `pbs.logmsg(level, msg)`, `pbs.logjobmsg(job_id, msg)`: recorded, not printed.
- `pbs.get_local_nodename()`, `pbs.hook_config_filename`, `pbs.get_hook_config_file()`.
- Event type constants (EXECJOB_*), log levels (LOG_*, EVENT_*).

The event comes from the JSON file named by $QLAM_FAKE_PBS_EVENT (see run_hook.py, which
also enforces the hook alarm the way pbs_mom does and reports the outcome).
"""

from __future__ import annotations

import json
import os
import time

# Event types: the HOOK_EVENT_* bit values of OpenPBS's src/include/hook.h.
QUEUEJOB = 0x01
MODIFYJOB = 0x02
RESVSUB = 0x04
MOVEJOB = 0x08
RUNJOB = 0x10
PROVISION = 0x20
EXECJOB_BEGIN = 0x40
EXECJOB_PROLOGUE = 0x80
EXECJOB_EPILOGUE = 0x100
EXECJOB_END = 0x200
EXECJOB_PRETERM = 0x400
EXECJOB_LAUNCH = 0x800
EXECHOST_PERIODIC = 0x1000
EXECHOST_STARTUP = 0x2000
EXECJOB_ATTACH = 0x4000
PERIODIC = 0x8000
RESV_END = 0x10000
EXECJOB_RESIZE = 0x20000
EXECJOB_ABORT = 0x40000
EXECJOB_POSTSUSPEND = 0x80000
EXECJOB_PRERESUME = 0x100000

EVENT_TYPES = {name: value for name, value in globals().items()
               if name.isupper() and isinstance(value, int)}

# Log event classes (PBSEVENT_* of OpenPBS's log.h).
EVENT_ERROR = 0x0001
EVENT_SYSTEM = 0x0002
EVENT_ADMIN = 0x0004
EVENT_JOB = 0x0008
EVENT_JOB_USAGE = 0x0010
EVENT_SECURITY = 0x0020
EVENT_SCHED = 0x0040
EVENT_DEBUG = 0x0080
EVENT_DEBUG2 = 0x0100
EVENT_RESV = 0x0200
EVENT_DEBUG3 = 0x0400
EVENT_DEBUG4 = 0x0800
LOG_ERROR = 3
LOG_WARNING = 4
LOG_DEBUG = 7

LEVEL_NAMES = {
    EVENT_ERROR: "EVENT_ERROR", EVENT_SYSTEM: "EVENT_SYSTEM", EVENT_ADMIN: "EVENT_ADMIN",
    EVENT_JOB: "EVENT_JOB", EVENT_DEBUG: "EVENT_DEBUG", EVENT_DEBUG2: "EVENT_DEBUG2",
    EVENT_DEBUG3: "EVENT_DEBUG3", EVENT_DEBUG4: "EVENT_DEBUG4",
    # LOG_* share values with EVENT_* classes in PBS too; name them as the hook meant.
    LOG_ERROR: "LOG_ERROR", LOG_WARNING: "LOG_WARNING", LOG_DEBUG: "LOG_DEBUG",
}


class UnsetAttributeNameError(AttributeError):
    """Referencing a non-existent attribute of a pbs.* object."""


class EventIncompatibleError(AttributeError):
    """Referencing an attribute the event type does not have."""


class BadAttributeValueError(ValueError):
    pass


class duration(int):
    """A time interval in seconds (pbs_module(7B): `pbs.duration`)."""

    def __new__(cls, value):
        if isinstance(value, str):
            seconds = 0.0
            for part in value.strip().split(":"):
                seconds = seconds * 60 + float(part)
            value = int(seconds)
        return int.__new__(cls, value)

    def __str__(self) -> str:
        s = int(self)
        return "%02d:%02d:%02d" % (s // 3600, s % 3600 // 60, s % 60)

    __repr__ = __str__


class pbs_resource(dict):
    """A resource list (`Resource_List`): a missing resource reads as None."""

    def __getitem__(self, key):
        return dict.get(self, key)


class pbs_env(dict):
    """An environment variable list (`pbs.event().env`)."""

    def __setitem__(self, key, value):
        if not isinstance(key, str) or not isinstance(value, str):
            raise BadAttributeValueError("env names and values must be str")
        dict.__setitem__(self, key, value)


class job:
    """The event's job (read-mostly here)."""

    def __init__(self, spec: dict):
        self.id = spec["id"]
        self.euser = spec.get("euser")
        self.egroup = spec.get("egroup")
        self.Job_Owner = spec.get("Job_Owner") or (
            "%s@submithost" % spec["euser"] if spec.get("euser") else None)
        rl = pbs_resource()
        for key, value in (spec.get("Resource_List") or {}).items():
            rl[key] = duration(value) if key in ("walltime", "cput") else value
        self.Resource_List = rl
        self.Variable_List = dict(spec.get("Variable_List") or {})
        self._msmom = bool(spec.get("in_ms_mom", True))

    def in_ms_mom(self) -> bool:
        return self._msmom

    def __str__(self) -> str:
        return str(self.id)


class event:
    """The one event of this hook run: pbs.event() returns it."""

    _current = None

    def __new__(cls):
        if cls._current is None:
            cls._current = object.__new__(cls)
            cls._current._load()
        return cls._current

    def __init__(self):
        pass

    def _load(self) -> None:
        with open(os.environ["QLAM_FAKE_PBS_EVENT"]) as fh:
            spec = json.load(fh)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "type", EVENT_TYPES[spec["type"]])
        object.__setattr__(self, "hook_name", spec.get("hook_name", "qlam_hpc"))
        object.__setattr__(self, "job", job(spec["job"]))
        object.__setattr__(self, "requestor", "pbs_mom")
        object.__setattr__(self, "requestor_host", spec.get("nodename", "localhost"))
        if self.type == EXECJOB_LAUNCH:
            object.__setattr__(self, "env", pbs_env(spec.get("env") or {}))
            object.__setattr__(self, "progname", spec.get("progname", "/bin/sh"))
            object.__setattr__(self, "argv", list(spec.get("argv") or ["-sh"]))
        RESULT.update(event_type=spec["type"], accepted=None, reject_msg=None)

    def __getattr__(self, name):
        # Only reached for attributes this event type does not have (e.g. env outside
        # execjob_launch), as PBS raises EventIncompatibleError.
        raise EventIncompatibleError("event has no attribute %r" % name)

    def accept(self, code=None):
        RESULT["accepted"] = True
        RESULT["ended_at"] = time.monotonic()
        raise SystemExit(0)

    def reject(self, msg=None):
        RESULT["accepted"] = False
        RESULT["reject_msg"] = None if msg is None else str(msg)
        RESULT["ended_at"] = time.monotonic()
        raise SystemExit(1)


# What the hook did, read by run_hook.py.
RESULT: dict = {"logs": []}


def logmsg(level, msg) -> None:
    RESULT["logs"].append({"level": LEVEL_NAMES.get(level, str(level)), "msg": str(msg)})


def logjobmsg(job_id, msg) -> None:
    RESULT["logs"].append({"level": "JOB", "job": str(job_id), "msg": str(msg)})


def _spec() -> dict:
    return event()._spec


def get_local_nodename() -> str:
    return _spec().get("nodename", "localhost")


def get_hook_config_file():
    return hook_config_filename


# As in OpenPBS's pbs/v1/_svr_types.py: the configuration file's path, or None.
hook_config_filename = os.environ.get("PBS_HOOK_CONFIG_FILE") or None

pbs_conf = {"PBS_HOME": "/var/spool/pbs", "PBS_EXEC": "/opt/pbs"}


def get_pbs_conf() -> dict:
    return dict(pbs_conf)
