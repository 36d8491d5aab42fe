"""The ``pprm`` command line (the top layer: it may import everything below it).

* :mod:`pprm.cli.main`: the argument parser, the verbs and ``main()``, the
  console-script entry point;
* :mod:`pprm.cli.demo`: ``pprm demo``, several states end to end on synthetic
  data, checked against plaintext truth;
* :mod:`pprm.cli.bench`: ``pprm bench``;
* :mod:`pprm.cli.progress`: the stderr progress bar.

Nothing is imported here, so that importing one submodule stays cheap.
"""

__all__: list[str] = []
