"""The bluesky-queueserver profile shipped with livetomo (package data).

``existing_plans_and_devices.yaml`` lists the plans and devices of the startup module
``livetomo.daemon.qserver_startup``; ``user_group_permissions.yaml`` lets the group
"primary" (the one ``qserver`` and ``bluesky_queueserver_api`` use) run every livetomo plan
on every device and call no function of the startup namespace.

``python -m livetomo.daemon.qserver_profile`` prints this directory; start-re-manager takes
it for ``--existing-plans-devices`` and ``--user-group-permissions`` (it finds the two files
by their default names there). After changing a plan's signature or docstring, regenerate
the list (``tests/daemon/test_qserver_manager.py`` checks that it matches the startup module)::

    qserver-list-plans-devices --startup-module livetomo.daemon.qserver_startup \\
        --file-dir "$(python -m livetomo.daemon.qserver_profile)"

The shipped list is the simulated beamline's. For another beamline (``LIVETOMO_CONFIG`` naming a
daemon configuration with ``beamline.kind: epics``), write the list of its devices into a
directory of your own, copy ``user_group_permissions.yaml`` beside it, and give start-re-manager
that directory::

    LIVETOMO_CONFIG=daemon.yaml qserver-list-plans-devices \\
        --startup-module livetomo.daemon.qserver_startup --file-dir ./qserver_profile
"""

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
EXISTING_PLANS_AND_DEVICES = DIRECTORY / "existing_plans_and_devices.yaml"
USER_GROUP_PERMISSIONS = DIRECTORY / "user_group_permissions.yaml"
