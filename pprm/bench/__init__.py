"""Benchmarks on synthetic galleries: the harness behind ``pprm bench`` and the suites in ``bench/``.

``pprm.bench`` sits above :mod:`pprm.net` and below :mod:`pprm.cli`; besides
the layers below it, it uses :mod:`pprm.synthetic` for its galleries.

* :mod:`pprm.bench.setup`: the two scratch states and the enrolled synthetic
  gallery every benchmark starts from, in either profile
  (:func:`~pprm.bench.setup.build_setup`);
* :mod:`pprm.bench.sealed`: ``pprm bench``, the sealed query per gallery size,
  with decision agreement against plaintext;
* :mod:`pprm.bench.blind`: ``pprm bench --profile blind``;
* :mod:`pprm.bench.kernel`: the multiply-accumulate kernels per backend, also
  runnable as ``python -m pprm.bench.kernel``;
* :mod:`pprm.bench.soak`: many concurrent queries, then an account of every
  one;
* :mod:`pprm.bench.report`: the machine description, the plaintext baseline
  and the table helpers both profiles print with;
* :mod:`pprm.bench.document`: ``pprm bench --out``, both profiles' results
  as one ``pprm.bench/1`` JSON document;
* :mod:`pprm.bench.plot`: ``pprm bench --plot``, the log-log figure of time
  per template against gallery size (matplotlib, the ``plot`` extra).

Nothing is imported here, so that importing one submodule stays cheap.
"""

__all__: list[str] = []
