"""edge-bridge: an edge node's alerts served to the line's PLC (Modbus TCP), MES and SCADA.

One job per module:

- :mod:`edge.bridge.outbox`: the state file: every alert received once, in order, and each
  downstream's cursor (what it acknowledged);
- :mod:`edge.bridge.intake`: the gap-filling, resuming subscriber (edge.subscriber) in its own
  thread, storing into the outbox;
- :mod:`edge.bridge.modbus`: the Modbus TCP server, vision-sensor register map and handshake
  (docs/plc.md);
- :mod:`edge.bridge.mqtt`: the MQTT publisher (QoS 1, alert_id, retained status, last will, TLS);
- :mod:`edge.bridge.opcua`: the OPC UA server (Machine Vision result variables, an event per result, Basic256Sha256);
- :mod:`edge.bridge.metrics`: the bridge's Prometheus metrics;
- :mod:`edge.bridge.cli`: the ``edge-bridge`` command line.

pymodbus (and paho-mqtt, asyncua) come with the ``plc`` extra: ``pip install 'edge-inspect[plc]'``.
"""
