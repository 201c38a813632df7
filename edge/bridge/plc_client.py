"""A small PLC-side client of edge-bridge's Modbus server: what a PLC program does, in Python
(docs/plc.md, "The handshake"). ``make demo-plc`` runs it to print the handshake; the tests and
bench/bridge_latency.py use :class:`PlcClient` as the PLC.

    python -m edge.bridge.plc_client --port 5020 --count 50

Each poll reads registers 0..15 in one request (one consistent snapshot; 0..53 with the part id
block, ``part_id=True``: the demo prints each result's part, the image's file name); a new result is
Result Valid = 1 with a result counter other than the last one acknowledged; it is acted on,
then acknowledged by writing its counter into registers 16-17 in one FC16 write. A result
counts as consumed only when that write succeeded; if it failed (the bridge died), the same
result comes again and is acknowledged again without being acted on twice.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from edge.bridge.modbus import (COIL_REJECT, CONTROL_CLEAR_ERROR, CONTROL_CLEAR_OVERRUN, N_REGISTERS, REG_ACK,
                                REG_CONTROL, decode_registers, u32_words)

N_READ = 16

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # a dead bridge is a result (None), not a log storm


class PlcClient:
    """pymodbus's synchronous client on one bridge. Methods return None (or False) instead of
    raising when the bridge does not answer: a PLC sees a failed request, not an exception."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5020, unit: int = 1, timeout: float = 1.0,
                 part_id: bool = False):
        from pymodbus.client import ModbusTcpClient
        self.unit = unit
        self.n_read = N_REGISTERS if part_id else N_READ   # 0..53 (with the part id block) or 0..15
        self.client = ModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0.1,
                                      reconnect_delay_max=0.5)

    def _ok(self, response) -> bool:
        return response is not None and not response.isError()

    def read(self) -> dict | None:
        """Registers 0..15 (0..53 with ``part_id``) decoded (edge.bridge.modbus.decode_registers);
        None when unanswered."""
        try:
            if not self.client.connected and not self.client.connect():
                return None
            r = self.client.read_holding_registers(0, count=self.n_read, device_id=self.unit)
        except Exception:   # pymodbus raises ConnectionException / ModbusIOException on a dead link
            self.client.close()
            return None
        return decode_registers(r.registers) if self._ok(r) else None

    def ack(self, counter: int) -> bool:
        """Write the result counter into the ack registers (16-17, FC16). True when the bridge
        answered without an exception: from then on that result is consumed."""
        try:
            r = self.client.write_registers(REG_ACK, u32_words(counter), device_id=self.unit)
        except Exception:
            self.client.close()
            return False
        return self._ok(r)

    def control(self, clear_overrun: bool = False, clear_error: bool = False) -> bool:
        value = (CONTROL_CLEAR_OVERRUN if clear_overrun else 0) | (CONTROL_CLEAR_ERROR if clear_error else 0)
        try:
            return self._ok(self.client.write_register(REG_CONTROL, value, device_id=self.unit))
        except Exception:
            self.client.close()
            return False

    def reject_coil(self) -> bool | None:
        try:
            r = self.client.read_coils(COIL_REJECT, count=1, device_id=self.unit)
        except Exception:
            self.client.close()
            return None
        return bool(r.bits[0]) if self._ok(r) else None

    def status_bits(self) -> list[bool] | None:
        try:
            r = self.client.read_discrete_inputs(0, count=9, device_id=self.unit)
        except Exception:
            self.client.close()
            return None
        return list(r.bits[:9]) if self._ok(r) else None

    def close(self) -> None:
        self.client.close()


class HeartbeatWatchdog:
    """The PLC's side of the heartbeat: faulted when the counter has not changed (or could not
    be read) for ``timeout_s`` (3-5 heartbeat periods)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.last_value: int | None = None
        self.last_change = time.monotonic()

    def feed(self, value: int | None, now: float | None = None) -> bool:
        """True while healthy."""
        now = time.monotonic() if now is None else now
        if value is not None and value != self.last_value:
            self.last_value, self.last_change = value, now
        return now - self.last_change < self.timeout_s


class Consumer:
    """The handshake loop of a PLC: poll, act on each new result once, acknowledge it."""

    def __init__(self, plc: PlcClient):
        self.plc = plc
        self.last_acked: int | None = None
        self.acted: set[int] = set()
        self.results: list[dict] = []     # consumed (acknowledged) results, in order
        self.ack_failures = 0
        self.represented = 0              # a result seen again after a failed ack (not acted on twice)

    def poll(self, on_result=None) -> dict | None:
        """One poll: returns the result consumed in it, if any."""
        r = self.plc.read()
        if r is None or not r["result_valid"] or r["result_counter"] == self.last_acked:
            return None
        counter = r["result_counter"]
        if counter in self.acted:
            self.represented += 1
        else:
            self.acted.add(counter)
            if on_result is not None:
                on_result(r)
        if self.plc.ack(counter):
            self.last_acked = counter
            self.results.append(r)
            return r
        self.ack_failures += 1
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.bridge.plc_client",
                                description="A PLC-side client of edge-bridge's Modbus server: prints the handshake.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    p.add_argument("--unit", type=int, default=1)
    p.add_argument("--poll-ms", type=float, default=10.0, help="poll period (default 10 ms)")
    p.add_argument("--count", type=int, help="stop after N results")
    p.add_argument("--timeout", type=float, default=60.0, help="stop after S seconds without a new result")
    args = p.parse_args(argv)
    plc = PlcClient(args.host, args.port, args.unit, part_id=True)
    consumer = Consumer(plc)
    dog = HeartbeatWatchdog(timeout_s=1.0)
    last_new, healthy = time.monotonic(), True

    def show(r):
        print(f"PLC  read  counter={r['result_counter']:<6} camera={r['camera_index']} frame={r['frame_seq']:<6} "
              f"verdict={r['verdict_code']} ({r['verdict']:<12}) score_x1000={r['score_x1000']:<6} "
              f"regions={r['region_count']} queue={r['queue_depth']} status=0x{r['status']:04x}"
              f"{' part=' + r['part_id'] if r['part_id'] else ''}"
              f"{' REJECT' if r['reject'] else ''}{' OVERRUN' if r['overrun'] else ''}", flush=True)
    try:
        while args.count is None or len(consumer.results) < args.count:
            got = consumer.poll(show)
            if got is not None:
                print(f"PLC  ack   counter={got['result_counter']} -> registers 16-17 (FC16): accepted", flush=True)
                last_new = time.monotonic()
            r = plc.read()
            ok = dog.feed(None if r is None else r["heartbeat"])
            if ok != healthy:
                print("PLC  heartbeat " + ("back" if ok else "STOPPED: station faulted (fail safe)"), flush=True)
                healthy = ok
            if time.monotonic() - last_new > args.timeout:
                print(f"PLC  no new result for {args.timeout:g} s: stopping", flush=True)
                break
            time.sleep(args.poll_ms / 1000)
    except KeyboardInterrupt:
        pass
    finally:
        plc.close()
    verdicts = {}
    for r in consumer.results:
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    print(f"PLC  {len(consumer.results)} results acknowledged: " +
          ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())), flush=True)
    return 0 if args.count is None or len(consumer.results) >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
