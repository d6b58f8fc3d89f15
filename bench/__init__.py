"""`make bench`: SIPp UAC -> system under test -> SIPp UAS over UDP, sweeping the call rate.

Run from the repository root as ``python -m bench`` (``python -m bench --help`` lists the options).
The method and the figures are in docs/PERFORMANCE.md.
"""
