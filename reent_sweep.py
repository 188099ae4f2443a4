import os, sys, tempfile, faulthandler, threading
sys.path.insert(0, "/work/wt-attack4")
from attempt_ledger import AttemptLedger, ReceiptEvent, LockReentered, LockTimeout, _locking
from attempt_ledger._locking import SidecarLock
faulthandler.dump_traceback_later(60, exit=True)
package = os.path.dirname(_locking.__file__)
for durable in (False, True):
  for via in ("same", "other", "other_timeout"):
    d = tempfile.mkdtemp()
    led = AttemptLedger(d, "r", "n", durable=durable)
    other = AttemptLedger(d, "r", "n", durable=durable, lock_timeout=0.01 if via == "other_timeout" else None)
    target = led if via == "same" else other
    outcomes = {}
    for n in range(1, 400):
        seen = [0]; inner = []
        def profile(frame, event, arg):
            if event in ("call", "c_return") and frame.f_code.co_filename.startswith(package):
                seen[0] += 1
                if seen[0] == n:
                    sys.setprofile(None)
                    try: inner.append(("ok", target.append(9, "h", [ReceiptEvent("h")]).seq))
                    except (LockReentered, LockTimeout) as e: inner.append((type(e).__name__,))
        sys.setprofile(profile)
        try:
            s = led.append(1, "s", [ReceiptEvent("a")])
        finally:
            sys.setprofile(None)
        for k in inner: outcomes[k[0]] = outcomes.get(k[0], 0) + 1
        seqs = [r.seq for r in led.records()]
        assert seqs == list(range(1, len(seqs)+1)), (n, seqs)
        assert s.seq in seqs
        if not inner: break
    print(durable, via, "points", n, outcomes)
