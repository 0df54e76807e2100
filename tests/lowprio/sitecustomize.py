"""Imported by every python process of a run that tests/conftest.py starts in the background (this folder leads its
PYTHONPATH). Each stage kernel and worker starts a session of its own, and so a scheduling group of its own, where a
task's nice value no longer counts against other sessions: the group's own nice does. So each process sets its group
to nice 19, and the background run takes only the CPU the tests leave."""
try:
    with open("/proc/self/autogroup", "w") as f:
        f.write("19")
except OSError:  # a kernel without autogroups: the inherited nice value is enough there
    pass
