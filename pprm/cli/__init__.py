"""The ``pprm`` command line (the top layer: it may import everything below it).

* :mod:`pprm.cli.main`: the parser, the dispatch and ``main()``, the
  console-script entry point;
* :mod:`pprm.cli.common`: the exit codes, the argument types and the input
  and output helpers every verb module shares;
* :mod:`pprm.cli.report`: the JSON vocabulary of ``--json`` (format tags,
  the envelope, the error codes; docs/JSON.md);
* the verbs, by theme: :mod:`pprm.cli.state_cmds` (init, card, trust,
  enroll, remove, info, audit), :mod:`pprm.cli.flow_cmds` (query, answer,
  open, follow-up, resolve), :mod:`pprm.cli.face_cmds` (embed, and photos as
  the input of enroll and query), :mod:`pprm.cli.net_cmds` (serve, route,
  ask), :mod:`pprm.cli.bench_cmds` (bench, over :mod:`pprm.bench`) and
  :mod:`pprm.cli.demo_cmds` (demo);
* :mod:`pprm.cli.demo`: ``pprm demo``'s run, several states end to end on
  synthetic data, checked against plaintext truth;
* :mod:`pprm.cli.progress`: the stderr progress bar;
* :mod:`pprm.cli.reference`: the command reference in Markdown
  (``docs/CLI.md``), rendered from the parser.

Nothing is imported here, so that importing one submodule stays cheap.
"""

__all__: list[str] = []
