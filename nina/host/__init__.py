"""Programs that run on the platform's hosts (as root, from the delivery).

Standard library only, plus `nina.facts` (itself standard library only): the delivery installs
this package, with `nina/__init__.py` and `nina/facts.py`, under facts.HOST_LIB_DIR on each host
(`nina.render.host_programs`), so they are linted, typed and tested with the rest of nina and a
change to one re-runs deliveries instead of replacing VMs. `receive` is the exception: it is
the small fixed receiver in user-data that installs the others, so it imports nothing of nina.
"""
