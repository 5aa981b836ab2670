"""The top floor: what a ``drsf`` command, a notebook or the app runs, built from the libraries below.

- ``runs``: the one path that makes the data, the pseudo-domains, the warm starts and the runs;
- ``protocol`` and ``report``: the protocol (``drsf protocol``) and its tables, intervals and figure;
- ``sweep``: a notebook over a parameter grid (``drsf batch``);
- ``notebook``: everything a notebook calls (its parameters, folders, figures and tables);
- ``gap``: the feature-space gap tables and figures (``drsf gap``);
- ``demo``, ``app``, ``app_kernels``: ``drsf demo`` and the dashboard server.

Nothing below this package imports it; only ``drsf_kit.cli`` (the argument parsing) sits above it.
"""
