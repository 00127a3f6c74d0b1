"""Getting a box and the runtime on it: named steps over a typed context, rolled back on failure.

options.py        ProvisionOptions (which box) holding RuntimeOptions (what runs on it)
driver.py         the step driver: offers in turn, Context, cancellation, rollback
box_steps.py      rent -> wait_running -> connect -> check
runtime_steps.py  push -> install -> autotune -> start (-> ready, in ready.py)
layout.py         where the runtime lives on a box; the wheel and the install script
autotune.py       the sweep on a box and its profile copied back (also `deploy autotune`)
server.py         the server's command line, and stopping it on a box we do not own
release.py        ending a rental: stop our server where needed, destroy, close the row
summary.py        what `deploy provision` prints
"""
