r"""Decoupled layers: a stacked LSTM cut between layer groups, each group updated without
waiting for the backward pass of the groups above it (docs/design.md §7).

Between group ``g`` and ``g + 1`` an interface synthesizer ``I_g`` predicts the gradient of
the loss at group g's output sequence, at every step of the window; group g updates with it
at once, and ``I_g`` is fitted to the true gradient that group g + 1 sends back, late. Each
group also keeps its own temporal DNI at its truncation boundary (the engine's one window
update, ``dnirnn.engine.update``). The groups can run in one process (a simulation of the
schedule) or one per process (``torch.distributed`` point-to-point), with the same floats.

Modules, one concept each (the first four know nothing of Lightning):

- ``stack``: the layer groups of a stacked ``LSTMCore`` (``split_core``);
- ``layers``: one group's window update: the maths, no processes (``Group``);
- ``schedule``: which group runs which window at which tick; how old each message is;
- ``transport``: messages by ``torch.distributed`` isend / irecv, or a loopback;
- ``pipeline``: a group's ticks, messages and between-step state (``GroupRunner``,
  ``run_step``), shared by the one-process simulation and the parallel run;
- ``lit``: ``DecoupledModule``, the LightningModule (``dnirnn fit --config
  ptb_char_decoupled``); ``collective``, what its processes share besides the pipeline's
  messages (step sums, the parameters before evaluation, the checkpoint's groups);
- ``parallel``: ``LayerParallelStrategy`` (a process per group, Lightning's DDP launch
  without the DDP wrapper) and the watchdog that stops a run whose peer died.
"""

from dnirnn.decoupled.layers import Group, GroupOptimizers, GroupResult, group_optimizers
from dnirnn.decoupled.pipeline import GroupRunner, WindowData, run_step
from dnirnn.decoupled.schedule import Schedule
from dnirnn.decoupled.stack import LayerGroup, group_bounds, split_core
from dnirnn.decoupled.transport import DistributedTransport, LoopbackTransport, PeerLost

__all__ = ["DistributedTransport", "Group", "GroupOptimizers", "GroupResult", "GroupRunner",
           "LayerGroup", "LoopbackTransport", "PeerLost", "Schedule", "WindowData",
           "group_bounds", "group_optimizers", "run_step", "split_core"]
