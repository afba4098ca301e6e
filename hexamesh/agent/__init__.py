"""The agent: wires identity, swarm key, transport and cores into one nursery.

One module per concern: ``files`` (keys, incarnation, contacts in the data
dir), ``process`` (descriptors, memory, the clock), ``status`` (agent.json,
/health), ``network`` (the cores behind one socket, the address, the join),
``models`` (the engine's models, danced), ``api`` (the API listener and the
metrics), ``run`` (all of it in one nursery).

The agent binds the peer port (UDP + TCP) and runs its protocol cores behind
one ``Mux`` over the sealed wire: the RTT probe (it probes its seeds), the
Kademlia DHT (it joins through its seeds, or through the contacts it saved
before a restart) and the honeycomb (``Comb``: SWIM failure detection and
waggle gossip over six links). The founder of a swarm (no seeds) claims the
centre cell 0,0; a joiner surveys its seeds' views and claims a cell through
the DHT (``comb.service.Honeycomb``). On a graceful stop it leaves: its links
hear at once and its cell frees within a second.

While running, the agent keeps ``<data_dir>/agent.json`` up to date (node id,
address, cell, pid, RTT to each seed, comb neighbours, peers it holds alive
and dead, its services' health), so tools and tests can see its state
without scraping logs.

*Addresses.* The address peers are told is a guess at first and then what
peers report seeing (``net.address``): joiners ping their seeds, a restarted
agent pings its saved contacts. When it changes, the agent re-announces it
(``Readdress``): a SWIM announcement at a higher incarnation, its dance, its
cell record and its ``model:`` records.

*Containment.* Every service runs under ``services.Services`` (restarted with
backoff when it fails, shown as degraded meanwhile); every unit of work
reports what it raises to one ``faults.Faults`` (counted per component in the
metrics). A write of agent.json that fails is tried again at the next tick.
The agent raises its descriptor limit (``limits.NOFILE_WANTED``) and keeps
its SWIM incarnation in the data dir, so that a restart refutes its old
death with a small step (``limits.MAX_INCARNATION_JUMP``).
"""

from hexamesh.agent.files import PreparedAgent, prepare_agent, resolve_keyring
from hexamesh.agent.models import model_spec
from hexamesh.agent.network import AgentCores
from hexamesh.agent.process import wall_clock
from hexamesh.agent.run import run_agent
from hexamesh.agent.status import STATUS_FILE_NAME, AgentStatus, _StatusFile

__all__ = [
    "STATUS_FILE_NAME",
    "AgentCores",
    "AgentStatus",
    "PreparedAgent",
    "_StatusFile",
    "model_spec",
    "prepare_agent",
    "resolve_keyring",
    "run_agent",
    "wall_clock",
]
