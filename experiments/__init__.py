"""Command-line experiments, one package per paper (``experiments/<paper>/``).

Run ``python -m experiments.<paper>.main --config=experiments/<paper>/configs/<name>.py --workdir=DIR``;
see each folder's README for the configs and the paper's numbers.
"""
