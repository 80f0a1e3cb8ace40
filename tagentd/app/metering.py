"""The series read only when someone scrapes: runs and steps by state, the queue, the workers, the model
permits, the circuit breakers and the broker. Each is computed from the parts' own state and counters at
the scrape, so the daemon's hot paths do nothing for them (docs/operations.md, Metrics, lists every series).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tagent_client.core.breaker import State as BreakerState
from tagent_client.core.state import RunStatus, StepStatus
from tagentd.broker import views as broker_views
from tagentd.broker.service import BrokerShell
from tagentd.executor.breakers import BreakerDesk
from tagentd.executor.interface import Executor
from tagentd.executor.permits import PermitDesk
from tagentd.runs.table import RunTable

#: The broker's own counters (BrokerShell.counters) exposed as `tagentd_broker_<name>_total`, with their help.
BROKER_COUNTERS = {
    "messages_sent": "Messages sent to mailboxes (a repeated send with the same key is not counted).",
    "messages_delivered": "Messages handed to a receiver (redeliveries included).",
    "messages_acked": "Messages acknowledged by their receiver.",
    "messages_released": "Messages given back to their mailbox after a failed or abandoned receive.",
    "messages_requeued": "Messages whose lease expired and went back to their mailbox.",
    "messages_dead": "Messages moved to their mailbox's dead letters (too many deliveries).",
    "messages_dropped": "Messages dropped from a mailbox on request.",
    "events_published": "Events published on the event bus (run lifecycle and user events).",
    "events_delivered": "Events delivered to subscribers of events.sock.",
    "events_dropped": "Events dropped because a subscriber was too slow.",
}


@dataclass
class Scraped:
    """The daemon's parts a scrape reads (app/daemon.py gives them)."""

    runs: RunTable
    executor: Executor
    permits: PermitDesk
    breakers: BreakerDesk
    broker: BrokerShell

    def collect(self) -> Iterator[Metric]:
        yield from self.runs_and_steps()
        yield from self.work()
        yield from self.permits_and_breakers()
        yield from self.messages()

    def runs_and_steps(self) -> Iterator[Metric]:
        runs, steps = self.runs.census()
        by_run = GaugeMetricFamily("tagentd_runs", "Runs the daemon knows (in memory or on disk), by status.",
                                   labels=["status"])
        for status in RunStatus:
            by_run.add_metric([status.value], runs.get(status.value, 0))
        by_step = GaugeMetricFamily("tagentd_steps", "Steps of the runs held in memory (every unfinished run and the "
                                    "recently finished ones), by status.", labels=["status"])
        for status in StepStatus:
            by_step.add_metric([status.value], steps.get(status.value, 0))
        yield by_run
        yield by_step

    def work(self) -> Iterator[Metric]:
        capacity = self.executor.capacity()
        yield GaugeMetricFamily("tagentd_queue_depth", "Step attempts waiting for a free worker slot.",
                                value=capacity.queued)
        yield GaugeMetricFamily("tagentd_attempts_in_flight", "Step attempts sent to workers and not yet reported.",
                                value=capacity.in_flight)
        slots = GaugeMetricFamily("tagentd_worker_slots", "Step slots of the ready workers, by state (busy, free).",
                                  labels=["state"])
        slots.add_metric(["busy"], capacity.slots - capacity.free)
        slots.add_metric(["free"], capacity.free)
        yield slots
        workers = GaugeMetricFamily("tagentd_workers", "Worker processes: busy (running a step), idle (ready, "
                                    "running none), or the state of one not ready (starting, stopping, ...).",
                                    labels=["state"])
        counts = {"busy": 0, "idle": 0}
        for worker in self.executor.workers():
            state = worker.state if worker.state != "ready" else "busy" if worker.running else "idle"
            counts[state] = counts.get(state, 0) + 1
        for state, count in sorted(counts.items()):
            workers.add_metric([state], count)
        yield workers

    def permits_and_breakers(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("tagentd_llm_permits_waiting", "Model requests waiting for a permit of a "
                                    "limited endpoint.", labels=["endpoint"])
        held = GaugeMetricFamily("tagentd_llm_permits_held", "Model requests holding a permit of a limited endpoint "
                                 "(in flight).", labels=["endpoint"])
        for endpoint, numbers in sorted(self.permits.stats().items()):
            waiting.add_metric([endpoint], numbers["waiting"])
            held.add_metric([endpoint], numbers["in_flight"])
        yield waiting
        yield held
        yield CounterMetricFamily("tagentd_llm_permits_granted", "Model-request permits granted.",
                                  value=self.permits.granted)
        states = GaugeMetricFamily("tagentd_breaker_state", "1 for the state each circuit breaker is in (closed, "
                                   "open, half_open), 0 for the others.", labels=["breaker", "state"])
        opened = CounterMetricFamily("tagentd_breaker_opened", "Times each circuit breaker opened.",
                                     labels=["breaker"])
        for breaker in self.breakers.stats():
            for state in BreakerState:
                states.add_metric([breaker["name"], state.value], 1 if breaker["state"] == state.value else 0)
            opened.add_metric([breaker["name"]], breaker["opened"])
        yield states
        yield opened
        asked = CounterMetricFamily("tagentd_breaker_asks", "Calls through each circuit breaker that a worker asked the "
                                    "daemon about (calls admitted on a lease are not asked).", labels=["breaker"])
        leased = CounterMetricFamily("tagentd_breaker_leases", "Leases each circuit breaker granted (docs/agents.md, "
                                     "Circuit breakers).", labels=["breaker"])
        for name, (asks, leases) in self.breakers.counts().items():
            asked.add_metric([name], asks)
            leased.add_metric([name], leases)
        yield asked
        yield leased

    def messages(self) -> Iterator[Metric]:
        totals = self.broker.counters()
        for name, help_text in BROKER_COUNTERS.items():
            yield CounterMetricFamily(f"tagentd_broker_{name}", help_text, value=totals.get(name, 0))
        topics = CounterMetricFamily("tagentd_broker_topic_events_published", "Events published per topic (the first "
                                     "256 topics by name, any other as _other).", labels=["topic"])
        if self.broker.bus is not None:
            for topic, count in sorted(self.broker.bus.published_by_topic.items()):
                topics.add_metric([topic], count)
        yield topics
        depth = GaugeMetricFamily("tagentd_broker_mailbox_messages", "Messages waiting in each mailbox.",
                                  labels=["mailbox"])
        leased = GaugeMetricFamily("tagentd_broker_mailbox_leased", "Messages of each mailbox delivered and not yet "
                                   "acknowledged.", labels=["mailbox"])
        dead = GaugeMetricFamily("tagentd_broker_mailbox_dead_letters", "Dead letters kept in each mailbox.",
                                 labels=["mailbox"])
        for box in broker_views.mailboxes(self.broker, None, 0):
            depth.add_metric([box.name], box.messages)
            leased.add_metric([box.name], box.leased)
            dead.add_metric([box.name], box.dead)
        yield depth
        yield leased
        yield dead
