"""A faithful, self-contained stand-in for Instructure's API gateway and DAP Query API.

Logins issue real JWTs; the five DAP endpoints answer in the exact shapes the official
client parses; jobs move from waiting through running to complete with the clock; objects
download from pre-signed URLs on the simulator itself, with deterministic content that
:func:`expected_object_bytes` reproduces. Tests inject failures through ``Faults`` and read
what arrived from ``SimulatorState``::

    app = create_simulator_app(SimulatorSettings(job_duration=0, rate_limits=False))
    state = app[SIMULATOR_STATE]
    state.faults.api_statuses = [503]

Modules: ``settings`` (read-only configuration), ``state`` (faults, counters, records),
``identity`` (credentials and JWTs), ``tables`` (tables and schemas), ``data`` (rows and
object bytes), ``jobs``, ``ratelimit``, ``storage`` (signed URLs, downloads), ``login`` and
``dap_api`` (handlers), ``middleware``, ``responses``, ``app``.
"""

from .app import create_simulator_app
from .data import expected_object_bytes
from .middleware import authenticated_client
from .settings import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SimulatorSettings
from .state import SIMULATOR_STATE, Faults, RecordedRequest, SimulatorState

__all__ = [
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "SIMULATOR_STATE",
    "Faults",
    "RecordedRequest",
    "SimulatorSettings",
    "SimulatorState",
    "authenticated_client",
    "create_simulator_app",
    "expected_object_bytes",
]
