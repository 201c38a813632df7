"""The Modbus TCP server of edge-bridge: results for a PLC, vision-sensor style (docs/plc.md).

Modelled on what vision sensors expose (Cognex In-Sight's Modbus map is the reference): a
status word of bits, the result registers, a heartbeat counter, and a handshake: a result
stays in the registers until the PLC writes its result counter into the ack registers; the
results behind it wait in a bounded queue, and when the queue is full a new result is not
queued (the Results Buffer Overrun bit latches and a counter counts it) while every result
already queued stays.

Durability: the queue is a table in the bridge's state file (edge.bridge.outbox), and an ack is
committed (fsynced) *before* pymodbus sends the write's response. So a PLC whose ack write
succeeded never sees that result again, after any crash of the bridge; a PLC whose ack write
failed (no response: the bridge died) sees the same result again and acks it again.

pymodbus 3.16's SimDevice is the datastore: its ``action`` hook runs on every request before the
registers are read or written, so the registers are rendered from this module's state on each
request (one request = one consistent snapshot) and writes are interpreted here.
"""
from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from dataclasses import dataclass, field

from edge.bridge.outbox import Outbox, StateError

log = logging.getLogger("edge.bridge")

# -- the register map (docs/plc.md is written from these; keep both in step) -------------------
# Holding registers (FC3 read; the same block is mirrored as input registers, FC4). 0-based.
REG_STATUS = 0
REG_HEARTBEAT = 1
REG_RESULT_COUNTER = 2      # 2 registers, u32, high word first: the result's alert_seq
REG_CAMERA_INDEX = 4
REG_FRAME_SEQ = 5           # 2 registers, i32, high word first (-1: an alert about the camera itself)
REG_SCORE_X1000 = 7         # 2 registers, i32, high word first: round(score * 1000); 0 without a score
REG_VERDICT = 9             # 0 none, 1 OK, 2 NotOK, 3 NotDecidable (OPC 40001-101 ResultEvaluation)
REG_REGION_COUNT = 10
REG_QUEUE_DEPTH = 11        # results waiting, the one in the registers included
REG_OVERRUN_COUNT = 12      # results not queued because the queue was full (u16, wraps)
REG_ERROR_CODE = 13
REG_NORMALISED_X1000 = 14   # round(normalised_score * 1000), 0..1000; 65535 without a score
REG_RESERVED = 15
REG_ACK = 16                # 2 registers, written by the PLC: the result counter it acknowledges
REG_CONTROL = 18            # written by the PLC: bit 0 clears the overrun latch, bit 1 the error
# The part id block (read only), after the PLC's registers so that 0..15 keep their meaning and a
# PLC that needs no part id never reads it. Read 0..53 in one request for a snapshot of both; read
# apart, PART_ID_COUNTER (a copy of RESULT_COUNTER) tells the PLC which result the id belongs to.
REG_PART_ID_COUNTER = 19    # 2 registers, u32: the result counter this part id belongs to (0: none)
REG_PART_ID_LENGTH = 21     # the part id's length in bytes (UTF-8); above PART_ID_MAX_BYTES: truncated
REG_PART_ID = 22            # PART_ID_REGISTERS registers: the id, 2 bytes each, first byte in the high byte
PART_ID_MAX_BYTES = 64
PART_ID_REGISTERS = PART_ID_MAX_BYTES // 2
N_REGISTERS = REG_PART_ID + PART_ID_REGISTERS      # 54
PLC_WRITABLE = range(REG_ACK, REG_CONTROL + 1)

# Status bits (REG_STATUS, and discrete inputs 0..8, FC2)
BIT_ONLINE = 0          # the bridge serves (always 1 in a response: a dead bridge does not answer)
BIT_READY = 1           # the bridge is connected to the edge node: results can flow
BIT_RESULT_VALID = 2    # a result is in the registers and waits for the PLC's ack
BIT_PASS = 3            # ...its verdict is OK
BIT_FAIL = 4            # ...NotOK
BIT_NOT_DECIDABLE = 5   # ...NotDecidable: the part was NOT inspected (fail safe)
BIT_ERROR = 6           # ERROR_CODE is not 0 (latched until cleared through CONTROL)
BIT_OVERRUN = 7         # a result was not queued because the queue was full (latched)
BIT_REJECT = 8          # the reject output (coil 0) is on
N_STATUS_BITS = 9

COIL_REJECT = 0         # coil 0 (FC1, read only): pulsed for --reject-pulse-ms on the verdicts of --reject-on

CONTROL_CLEAR_OVERRUN = 1 << 0
CONTROL_CLEAR_ERROR = 1 << 1

VERDICT_CODES = {"OK": 1, "NotOK": 2, "NotDecidable": 3}
ERROR_NONE = 0
ERROR_ALERTS_LOST = 1   # the node no longer had alerts the bridge missed: parts not inspected
ERROR_STATE_WRITE = 2   # the bridge could not write its state file (an ack may not have been taken)
ERROR_ACK_MISMATCH = 3  # the PLC acknowledged a counter that is not the result presented
ERROR_TEXT = {ERROR_NONE: "none", ERROR_ALERTS_LOST: "alerts lost upstream (parts not inspected)",
              ERROR_STATE_WRITE: "state file write failed", ERROR_ACK_MISMATCH: "ack of a counter not presented"}

CURSOR = "modbus"       # the cursor row: every outbox id up to it is queued, acked or an overrun
QUEUE_DDL = "CREATE TABLE IF NOT EXISTS modbus_queue (id INTEGER PRIMARY KEY)"


def u32_words(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def i32_words(value: int) -> list[int]:
    return u32_words(max(-(1 << 31), min((1 << 31) - 1, int(value))))


def string_words(text: str, n_registers: int) -> list[int]:
    """``text`` as UTF-8 in ``n_registers`` registers, two bytes per register, the first in the high
    byte (Modbus is big-endian: a Siemens S7 CHAR array reads it in order), zero-padded, cut at the end."""
    raw = text.encode()[:2 * n_registers].ljust(2 * n_registers, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


def words_string(words: list[int], length: int) -> str:
    raw = b"".join(bytes([w >> 8 & 0xFF, w & 0xFF]) for w in words)[:length]
    return raw.decode(errors="replace")   # a UTF-8 sequence cut at the register end shows as U+FFFD


def words_u32(hi: int, lo: int) -> int:
    return ((hi & 0xFFFF) << 16) | (lo & 0xFFFF)


def words_i32(hi: int, lo: int) -> int:
    v = words_u32(hi, lo)
    return v - (1 << 32) if v >= 1 << 31 else v


@dataclass
class ModbusConfig:
    host: str = "127.0.0.1"
    port: int = 5020
    queue_size: int = 64
    heartbeat_ms: int = 100
    reject_pulse_ms: int = 0             # 0: no reject output
    reject_on: tuple[str, ...] = ("NotOK", "NotDecidable")
    cameras: tuple[str, ...] = ()        # camera index = position + 1; () -> every camera index 0
    device_id: int = 0                   # 0: answer any unit id

    def check(self) -> None:
        """ValueError naming the option and what to do."""
        if not 1 <= self.queue_size <= 65535:
            raise ValueError(f"--modbus-queue {self.queue_size}: give 1..65535 results")
        if not 10 <= self.heartbeat_ms <= 60_000:
            raise ValueError(f"--heartbeat-ms {self.heartbeat_ms}: give 10..60000 ms")
        if not 0 <= self.reject_pulse_ms <= 60_000:
            raise ValueError(f"--reject-pulse-ms {self.reject_pulse_ms}: give 0 (off) .. 60000 ms")
        bad = [v for v in self.reject_on if v not in VERDICT_CODES]
        if bad:
            raise ValueError(f"--reject-on {','.join(bad)}: give verdicts among {', '.join(VERDICT_CODES)}")
        if not 0 <= self.device_id <= 247:
            raise ValueError(f"--modbus-unit {self.device_id}: give 0 (any) .. 247")


@dataclass
class ModbusCounters:
    presented: int = 0
    acked: int = 0
    acks_repeated: int = 0
    ack_mismatches: int = 0
    overruns: int = 0
    rejects_pulsed: int = 0
    plc_connects: int = 0
    plc_disconnects: int = 0
    state_errors: int = 0
    ack_latency_ms: list = field(default_factory=list)   # last samples: presented -> acked


class ModbusBridge:
    """The result registers of one edge node for one PLC connection (or several reading the
    same registers: the handshake is one queue). Runs in the bridge's asyncio loop; reads the
    outbox and moves its cursor through ``outbox`` (a connection of that loop's thread)."""

    def __init__(self, outbox: Outbox, config: ModbusConfig, *, ready=lambda: False, alerts_lost=lambda: 0):
        config.check()
        self.outbox, self.config = outbox, config
        self.ready, self.alerts_lost = ready, alerts_lost
        self.counters = ModbusCounters()
        self.heartbeat = 0
        self.reject = False
        self.error_code = ERROR_NONE
        self.ack_words = [0, 0]
        self._camera_index = {name: i + 1 for i, name in enumerate(config.cameras)}
        self._presented: tuple[int, dict] | None = None
        self._presented_at = 0.0
        self._last_acked_counter: int | None = None
        self._lost_seen = 0
        self._server = None
        self._tasks: list[asyncio.Task] = []
        self._reject_off: asyncio.TimerHandle | None = None
        self.wake = asyncio.Event()
        with outbox.transaction():
            outbox.execute(QUEUE_DDL)
            if outbox.cursor(CURSOR) is None:
                # a new downstream starts with what arrives from now on (not the outbox's history)
                outbox.set_cursor(CURSOR, outbox.last_id())
        self.overrun_count = int(outbox.meta("modbus.overruns", "0"))
        self.overrun_latched = outbox.meta("modbus.overrun_latched", "0") == "1"
        self._pulsed_id = int(outbox.meta("modbus.pulsed", "0"))

    # -- queue -----------------------------------------------------------------------------
    def queue_depth(self) -> int:
        return self.outbox.execute("SELECT count(*) FROM modbus_queue").fetchone()[0]

    def admit(self) -> int:
        """Queue what arrived since the cursor (up to the bound; the rest are overruns). One
        transaction per batch: the cursor and the queue move together."""
        admitted = 0
        while True:
            considered = self.outbox.cursor(CURSOR) or 0
            batch = self.outbox.after(considered, 200)
            if not batch:
                break
            depth = self.queue_depth()
            overruns = []
            with self.outbox.transaction():
                for oid, alert in batch:
                    if depth < self.config.queue_size:
                        self.outbox.execute("INSERT INTO modbus_queue (id) VALUES (?)", (oid,))
                        depth += 1
                        admitted += 1
                    else:
                        overruns.append(alert)
                if overruns:
                    self.overrun_count += len(overruns)
                    self.overrun_latched = True
                    self.outbox.set_meta(**{"modbus.overruns": self.overrun_count, "modbus.overrun_latched": 1})
                self.outbox.set_cursor(CURSOR, batch[-1][0])
            if overruns:
                self.counters.overruns += len(overruns)
                log.error("Modbus results buffer overrun: the PLC has %d unacknowledged results; %d result(s) not "
                          "queued for it (alert_seq %s..%s): acknowledge each result (docs/plc.md) or raise "
                          "--modbus-queue", depth, len(overruns), overruns[0]["alert_seq"], overruns[-1]["alert_seq"])
        self._present_head()
        return admitted

    def _present_head(self) -> None:
        if self._presented is not None:
            return
        row = self.outbox.execute("SELECT min(id) FROM modbus_queue").fetchone()
        if row[0] is None:
            return
        alert = self.outbox.get(row[0])
        if alert is None:    # pruned from under us: cannot happen while queued; never present a blank result
            with self.outbox.transaction():
                self.outbox.execute("DELETE FROM modbus_queue WHERE id = ?", (row[0],))
            return self._present_head()
        self._presented = (row[0], alert)
        self._presented_at = time.monotonic()
        self.counters.presented += 1
        if (self.config.reject_pulse_ms and alert["verdict"] in self.config.reject_on
                and row[0] != self._pulsed_id):
            self._pulse_reject(row[0])

    def _pulse_reject(self, oid: int) -> None:
        # recorded first: a bridge restarted during the pulse does not pulse the same part twice
        try:
            self.outbox.set_meta(**{"modbus.pulsed": oid})
        except StateError as e:
            self._state_error(e)
        self._pulsed_id = oid
        self.reject = True
        self.counters.rejects_pulsed += 1
        if self._reject_off is not None:
            self._reject_off.cancel()
        self._reject_off = asyncio.get_running_loop().call_later(self.config.reject_pulse_ms / 1000,
                                                                 self._reject_done)

    def _reject_done(self) -> None:
        self.reject = False
        self._reject_off = None

    def _on_ack(self, value: int) -> bool:
        """The PLC wrote ``value`` into the ack registers. True when it acknowledged the result
        presented (committed before this returns)."""
        if self._presented is None or value != self._presented[1]["alert_seq"] & 0xFFFFFFFF:
            if value == self._last_acked_counter:
                self.counters.acks_repeated += 1   # its previous ack's response was lost: harmless
            else:
                self.counters.ack_mismatches += 1
                self.error_code = ERROR_ACK_MISMATCH
                log.warning("the PLC acknowledged result counter %d, but %s is presented: ignored (write the "
                            "result counter you read from registers 2-3)", value,
                            self._presented[1]["alert_seq"] if self._presented else "none")
            return False
        oid = self._presented[0]
        with self.outbox.transaction():
            self.outbox.execute("DELETE FROM modbus_queue WHERE id = ?", (oid,))
        self.counters.acked += 1
        lat = self.counters.ack_latency_ms
        lat.append((time.monotonic() - self._presented_at) * 1000)
        del lat[:-1000]
        self._last_acked_counter = value
        self._presented = None
        self.ack_words = [0, 0]
        self._present_head()
        return True

    def _state_error(self, e: Exception) -> None:
        self.counters.state_errors += 1
        self.error_code = ERROR_STATE_WRITE
        log.error("%s", e)

    # -- registers -------------------------------------------------------------------------
    def status_word(self) -> int:
        lost = self.alerts_lost()
        if lost > self._lost_seen:
            self._lost_seen = lost
            self.error_code = ERROR_ALERTS_LOST
        bits = {BIT_ONLINE: True, BIT_READY: bool(self.ready()), BIT_ERROR: self.error_code != ERROR_NONE,
                BIT_OVERRUN: self.overrun_latched, BIT_REJECT: self.reject}
        if self._presented is not None:
            verdict = self._presented[1]["verdict"]
            bits.update({BIT_RESULT_VALID: True, BIT_PASS: verdict == "OK", BIT_FAIL: verdict == "NotOK",
                         BIT_NOT_DECIDABLE: verdict == "NotDecidable"})
        return sum(1 << b for b, on in bits.items() if on)

    def registers(self) -> list[int]:
        regs = [0] * N_REGISTERS
        regs[REG_STATUS] = self.status_word()
        regs[REG_HEARTBEAT] = self.heartbeat & 0xFFFF
        if self._presented is not None:
            a = self._presented[1]
            regs[REG_RESULT_COUNTER:REG_RESULT_COUNTER + 2] = u32_words(a["alert_seq"])
            regs[REG_CAMERA_INDEX] = self._camera_index.get(a["camera"], 0)
            regs[REG_FRAME_SEQ:REG_FRAME_SEQ + 2] = i32_words(a["frame_seq"])
            score = a.get("score")
            if score is not None and math.isfinite(score):
                regs[REG_SCORE_X1000:REG_SCORE_X1000 + 2] = i32_words(round(score * 1000))
            regs[REG_VERDICT] = VERDICT_CODES.get(a["verdict"], 0)
            regs[REG_REGION_COUNT] = min(len(a.get("regions") or ()), 0xFFFF)
            ns = a.get("normalised_score")
            regs[REG_NORMALISED_X1000] = (max(0, min(1000, round(ns * 1000)))
                                          if ns is not None and math.isfinite(ns) else 0xFFFF)
            part_id = a.get("part_id")
            if part_id:
                regs[REG_PART_ID_COUNTER:REG_PART_ID_COUNTER + 2] = u32_words(a["alert_seq"])
                regs[REG_PART_ID_LENGTH] = min(len(part_id.encode()), 0xFFFF)
                regs[REG_PART_ID:REG_PART_ID + PART_ID_REGISTERS] = string_words(part_id, PART_ID_REGISTERS)
        elif self._last_acked_counter is not None:
            # nothing waiting: the counter stays at the last result acked, so the PLC sees its ack took
            regs[REG_RESULT_COUNTER:REG_RESULT_COUNTER + 2] = u32_words(self._last_acked_counter)
            regs[REG_NORMALISED_X1000] = 0xFFFF
        else:
            regs[REG_NORMALISED_X1000] = 0xFFFF
        regs[REG_QUEUE_DEPTH] = min(self.queue_depth(), 0xFFFF)
        regs[REG_OVERRUN_COUNT] = self.overrun_count & 0xFFFF
        regs[REG_ERROR_CODE] = self.error_code
        regs[REG_ACK:REG_ACK + 2] = self.ack_words
        return regs

    async def _action(self, function_code, start_address, address, count, current, set_values):
        """pymodbus calls this on every request, before the registers are read or written."""
        from pymodbus.constants import ExcCodes
        try:
            if function_code in (3, 4) or (function_code == 6 and set_values is None):
                # holding / input registers (pymodbus reads the register before an FC6 write, too)
                regs = self.registers()
                n = min(len(current) - start_address, N_REGISTERS)
                current[start_address:start_address + n] = regs[:n]
                return None
            if function_code == 2:           # discrete inputs = the status bits
                current[start_address] = self.status_word() & ((1 << N_STATUS_BITS) - 1)
                return None
            if function_code == 1:           # coils: the reject output
                current[start_address] = int(self.reject) << COIL_REJECT
                return None
            if function_code in (5, 15):     # the reject output is the bridge's, not the PLC's
                return ExcCodes.ILLEGAL_ADDRESS
            if function_code in (6, 16):
                if address < PLC_WRITABLE.start or address + count > PLC_WRITABLE.stop:
                    return ExcCodes.ILLEGAL_ADDRESS
                return self._on_write(address, list(set_values))
            return ExcCodes.ILLEGAL_FUNCTION
        except StateError as e:              # the PLC must know its ack did not take: exception 4
            self._state_error(e)
            return ExcCodes.DEVICE_FAILURE

    def _on_write(self, address: int, values: list[int]):
        ack_completed = False
        for i, v in enumerate(values):
            reg = address + i
            if reg in (REG_ACK, REG_ACK + 1):
                self.ack_words[reg - REG_ACK] = v & 0xFFFF
                ack_completed |= reg == REG_ACK + 1   # the low word completes an ack (FC16 both, or FC6 hi then lo)
            elif reg == REG_CONTROL:
                if v & CONTROL_CLEAR_OVERRUN:
                    self.overrun_latched = False
                    self.outbox.set_meta(**{"modbus.overrun_latched": 0})
                if v & CONTROL_CLEAR_ERROR:
                    self.error_code = ERROR_NONE
        if ack_completed:
            self._on_ack(words_u32(*self.ack_words))
        return None

    # -- serving ---------------------------------------------------------------------------
    def _on_connect(self, connected: bool) -> None:
        if connected:
            self.counters.plc_connects += 1
            log.info("a PLC connected to the Modbus server")
        else:
            self.counters.plc_disconnects += 1
            log.info("a PLC disconnected from the Modbus server")

    async def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice
        host, port = self.config.host, self.config.port
        check_bind(host, port)
        device = SimDevice(self.config.device_id, simdata=(
            [SimData(0, count=16, datatype=DataType.BITS)],                        # coils: reject (coil 0)
            [SimData(0, count=16, datatype=DataType.BITS)],                        # discrete inputs: status bits
            [SimData(0, count=N_REGISTERS, datatype=DataType.REGISTERS)],          # holding registers
            [SimData(0, count=N_REGISTERS, datatype=DataType.REGISTERS)]),         # input registers (mirror)
            action=self._action)
        self._server = ModbusTcpServer(device, address=(host, port), trace_connect=self._on_connect)
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError as e:
            raise OSError(f"cannot serve Modbus TCP on {host}:{port}: {e} (choose another --modbus-port)") from e
        self.admit()
        self._tasks = [asyncio.create_task(self._heartbeat(), name="modbus-heartbeat"),
                       asyncio.create_task(self._admit_loop(), name="modbus-admit")]
        log.info("Modbus TCP server on %s:%d (unit %s), queue of %d results", host, port,
                 self.config.device_id or "any", self.config.queue_size)

    async def _heartbeat(self) -> None:
        # a counter, not a toggling bit: a bit can freeze high when the link drops, a counter cannot
        period = self.config.heartbeat_ms / 1000
        while True:
            await asyncio.sleep(period)
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF

    async def _admit_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                self.admit()
            except StateError as e:
                self._state_error(e)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    def snapshot(self) -> dict:
        c = self.counters
        return {"presented": c.presented, "acked": c.acked, "acks_repeated": c.acks_repeated,
                "ack_mismatches": c.ack_mismatches, "overruns": c.overruns, "rejects_pulsed": c.rejects_pulsed,
                "plc_connects": c.plc_connects, "plc_disconnects": c.plc_disconnects, "state_errors": c.state_errors,
                "pending": self.queue_depth(), "overruns_total": self.overrun_count,
                "ack_latency_ms": list(c.ack_latency_ms)}


def check_bind(host: str, port: int) -> None:
    """Bind once ourselves to name the reason (pymodbus only says 'could not start listen')."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot serve Modbus TCP on {host}:{port}: {e.strerror} (--modbus-host: an address "
                      "of this machine, e.g. 0.0.0.0 or 127.0.0.1)") from e
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            hint = ("ports below 1024 need root or CAP_NET_BIND_SERVICE; 502 is Modbus's port" if e.errno == 13
                    else "another process on that port? choose another --modbus-port")
            raise OSError(f"cannot serve Modbus TCP on {host}:{port}: {e.strerror} ({hint})") from e


def decode_registers(regs: list[int]) -> dict:
    """Registers 0..15 (or 0..53, with the part id block) as a PLC reads them (FC3 or FC4), decoded
    by this map: what docs/plc.md describes, in code (the demo's PLC client and the tests read
    results with it). ``part_id`` is None when the block was not read or holds no id for the
    result presented."""
    status = regs[REG_STATUS]
    names = {BIT_ONLINE: "online", BIT_READY: "ready", BIT_RESULT_VALID: "result_valid", BIT_PASS: "pass",
             BIT_FAIL: "fail", BIT_NOT_DECIDABLE: "not_decidable", BIT_ERROR: "error", BIT_OVERRUN: "overrun",
             BIT_REJECT: "reject"}
    out = {name: bool(status >> bit & 1) for bit, name in names.items()}
    verdicts = {code: v for v, code in VERDICT_CODES.items()}
    out.update(status=status, heartbeat=regs[REG_HEARTBEAT],
               result_counter=words_u32(*regs[REG_RESULT_COUNTER:REG_RESULT_COUNTER + 2]),
               camera_index=regs[REG_CAMERA_INDEX], frame_seq=words_i32(*regs[REG_FRAME_SEQ:REG_FRAME_SEQ + 2]),
               score_x1000=words_i32(*regs[REG_SCORE_X1000:REG_SCORE_X1000 + 2]),
               verdict_code=regs[REG_VERDICT], verdict=verdicts.get(regs[REG_VERDICT]),
               region_count=regs[REG_REGION_COUNT], queue_depth=regs[REG_QUEUE_DEPTH],
               overrun_count=regs[REG_OVERRUN_COUNT], error_code=regs[REG_ERROR_CODE],
               normalised_x1000=None if regs[REG_NORMALISED_X1000] == 0xFFFF else regs[REG_NORMALISED_X1000])
    part_id = None
    if len(regs) >= N_REGISTERS and regs[REG_PART_ID_LENGTH] and out["result_valid"] and \
            words_u32(*regs[REG_PART_ID_COUNTER:REG_PART_ID_COUNTER + 2]) == out["result_counter"]:
        part_id = words_string(regs[REG_PART_ID:REG_PART_ID + PART_ID_REGISTERS],
                               min(regs[REG_PART_ID_LENGTH], PART_ID_MAX_BYTES))
    out.update(part_id=part_id, part_id_length=regs[REG_PART_ID_LENGTH] if len(regs) >= N_REGISTERS else None)
    return out
