"""One process of the multi-host test (tests/test_parallel.py).

  python tests/multihost_worker.py WORKDIR PROCESS_ID NUM_PROCESSES PORT

Runs a short digits training job (global mining, 2 CPU devices per process).
With NUM_PROCESSES > 1 the processes join through `jax.distributed` on
127.0.0.1:PORT, CPU collectives over gloo; with 1 it runs alone. Process 0
leaves metrics.jsonl, summary.json and the checkpoints in WORKDIR.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
from absl import flags  # noqa: E402

from dmljax import parallel  # noqa: E402


def main(workdir: str, process_id: int, num_processes: int, port: int):
  flags.FLAGS.mark_as_parsed()
  if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    parallel.initialize_distributed(
      f"127.0.0.1:{port}", num_processes, process_id
    )
  from dmljax import train  # noqa: PLC0415
  from experiments.configs import methods  # noqa: PLC0415

  config = methods.get_config("method=margin_dw,dataset=digits,smoke")
  config.train.num_steps = 3
  config.ckpt.every = 3
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main(sys.argv[1], *map(int, sys.argv[2:]))
