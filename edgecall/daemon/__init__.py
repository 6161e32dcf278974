"""``edgecall serve``: the unattended basecalling daemon (watcher, journal, service,
systemd notify, localhost metrics). See :mod:`edgecall.daemon.service`.
"""
