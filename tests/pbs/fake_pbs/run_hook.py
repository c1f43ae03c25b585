"""Run a PBS hook script the way pbs_mom does, with the stand-in `pbs` module.

    python run_hook.py HOOK.py EVENT.json RESULT.json

- EVENT.json describes the event (see pbs.py): {"type": "EXECJOB_PROLOGUE", "job": {...},
  "nodename": "...", "env": {...} (execjob_launch), "alarm": 30, "hook_name": "..."}.
- $PBS_HOOK_CONFIG_FILE, if set, is the hook's configuration file (as pbs_mom sets it).
- The hook script runs with __name__ == "builtins", as PBS runs hooks under Python 3.
- The hook alarm: after "alarm" seconds the hook is stopped, as pbs_mom does, and the
  outcome is "alarm" (PBS then rejects the event).
- accept() / reject() end the hook through SystemExit; a hook that ends without calling
  either is accepted; an unhandled exception rejects the event (pbs_module(7B)).

RESULT.json gets {"outcome": "accept" | "reject" | "exception" | "alarm", "reject_msg",
"logs": [...], "env": {...} (execjob_launch), "elapsed": seconds, "traceback"}.
"""

import json
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    hook_path, event_path, result_path = sys.argv[1:4]
    os.environ["QLAM_FAKE_PBS_EVENT"] = event_path
    sys.path.insert(0, HERE)
    import pbs  # the stand-in

    with open(event_path) as fh:
        spec = json.load(fh)
    alarm = float(spec.get("alarm", 30))
    start = time.monotonic()
    done = {"written": False}

    def write(outcome: str, **extra) -> None:
        if done["written"]:
            return
        done["written"] = True
        result = dict(pbs.RESULT)
        result.update(extra)
        result["outcome"] = outcome
        result["elapsed"] = time.monotonic() - start
        ended = result.pop("ended_at", None)
        if ended is not None:
            result["ended_after"] = ended - start
        ev = pbs.event._current
        if ev is not None and "env" in vars(ev):
            result["env"] = dict(vars(ev)["env"])
        tmp = result_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=1, sort_keys=True)
        os.replace(tmp, result_path)

    def on_alarm(signum, frame):
        # pbs_mom stops a hook that outlives its alarm and rejects the event.
        write("alarm")
        os._exit(0)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, alarm)
    with open(hook_path) as fh:
        code = compile(fh.read(), hook_path, "exec")
    namespace = {"__name__": "builtins", "__file__": hook_path}
    try:
        exec(code, namespace)
        outcome = None
    except SystemExit:
        outcome = None
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
        write("exception", traceback=traceback.format_exc())
        return 0
    signal.setitimer(signal.ITIMER_REAL, 0)
    accepted = pbs.RESULT.get("accepted")
    outcome = "reject" if accepted is False else "accept"
    write(outcome, explicit=accepted is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
