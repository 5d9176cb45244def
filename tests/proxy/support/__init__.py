"""Helpers of the proxy tests: the differential corpus (``corpus``, with its payloads in
``framing`` and ``routing``, written with ``wire``) and the recording app servers (``apps``)."""
