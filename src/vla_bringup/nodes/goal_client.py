"""An action client whose answers cannot be lost to a race between threads.

rclpy's ActionClient sends a request first and records afterwards which future its answer will
complete (ros2/rclpy#1123). In ros-rclpy 9.1.2, the Kilted wheel this project runs on,
`send_goal_async` records the goal's future twice, the second time outside its lock: if an
executor thread handles the server's answer in between, it completes the first future and
the caller waits forever on the second, while the goal runs. On the 2-core CI VM this failed
a fault test: the arm moved, and the instruction node never heard that its skill goal was
accepted ("got no answer from the skill controller within 15 s").

Here every request is sent from a callback in the client's own mutually exclusive callback
group. rclpy's executors (9.1.2's single- and multi-threaded ones) take a waitable's answers
only once they may enter its callback group, so no answer is handled before the request's
future is recorded. The node must be spinning: requests wait for the executor to pick them up.

A request can also be lost in DDS while the server is only just being discovered. A server
that was killed stays in the graph for a while, so `wait_for_server` says yes before its
replacement is up. The session-21 probe saw the first goal to a restarted skill controller go
unanswered every time; resent every second, the third try (2.3 s after the restart) was
answered. `send_goal` therefore resends until one try is answered.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from rclpy.action import ActionClient
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.node import Node
from rclpy.task import Future


class GoalClient:
    def __init__(self, node: Node, action_type, action_name: str) -> None:
        self.node = node
        self.group = MutuallyExclusiveCallbackGroup()
        self.client = ActionClient(node, action_type, action_name, callback_group=self.group)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = node.create_guard_condition(self._send_requests, callback_group=self.group)

    def wait_for_server(self, timeout_sec: float | None = None) -> bool:
        return self.client.wait_for_server(timeout_sec=timeout_sec)

    def send_goal(self, goal, feedback_callback=None, timeout_s: float = 15.0,
                  resend_s: float = 2.0):
        """Send `goal`, resending every `resend_s` until the server answers; the kept goal
        handle (accepted or refused), or None when no try was answered within `timeout_s`.
        Blocks: call it from a thread the executor does not need.

        Each try carries its own goal id, a server takes requests in the order they were sent,
        and our servers let a newer goal preempt an older one. So once one try is answered,
        the link works and the tries sent after it are waited for too (up to `timeout_s`): the
        last one sent is the goal that runs, and it is kept. A slow server may so accept several
        tries, each restarting the skill. Every other accepted try is cancelled. Until the choice,
        every try's feedback reaches `feedback_callback` (a caller may watch it for liveness);
        after it, only the kept goal's. A server that handles goal requests on several threads
        may accept them out of order; then the try kept is not the one that runs (not seen here).
        Returns at the deadline, or as soon as the node shuts down."""
        answered = threading.Event()
        tries: list[Future] = []
        kept_id: list = []  # the kept goal's id, once chosen

        def feedback_of_kept(message) -> None:
            if not kept_id or bytes(message.goal_id.uuid) == kept_id[0]:
                feedback_callback(message)

        def any_answer() -> bool:
            return any(t.done() for t in tries) or not self._running()

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not any_answer():
            send = self.send_goal_async(goal, feedback_callback and feedback_of_kept)
            send.add_done_callback(lambda _: answered.set())
            tries.append(send)
            _wait_until(any_answer, min(resend_s, deadline - time.monotonic()), answered)
        first = next((i for i, t in enumerate(tries) if t.done()), None)
        if first is not None:
            later = tries[first + 1:]
            _wait_until(lambda: all(t.done() for t in later) or not self._running(),
                        deadline - time.monotonic(), answered)
        done = [t for t in tries if t.done()]
        kept = done[-1] if done else None
        kept_id.append(bytes(kept.result().goal_id.uuid)
                       if kept is not None and kept.exception() is None else b"")
        for send in tries:
            if send is not kept:
                send.add_done_callback(self._cancel_if_accepted)
        return None if kept is None else kept.result()  # raises the error of a failed send

    def send_goal_async(self, goal, feedback_callback=None) -> Future:
        """A future of the goal handle (accepted or not), as ActionClient.send_goal_async."""
        return self._in_group(
            lambda: self.client.send_goal_async(goal, feedback_callback=feedback_callback))

    def get_result_async(self, goal_handle) -> Future:
        return self._in_group(goal_handle.get_result_async)

    def cancel_goal_async(self, goal_handle) -> Future:
        return self._in_group(goal_handle.cancel_goal_async)

    def _cancel_if_accepted(self, send: Future) -> None:
        if send.exception() is None and send.result().accepted and self._running():
            # Nobody waits for this cancel: read its error, if any, so that rclpy does not
            # print it as never retrieved (a cancel that meets the node's shutdown).
            self.cancel_goal_async(send.result()).add_done_callback(lambda done: done.exception())

    def _running(self) -> bool:
        try:
            return self.node.context.ok()
        except InvalidHandle:  # the context was destroyed (observers.start_in_background)
            return False

    def _in_group(self, request: Callable[[], Future]) -> Future:
        answer = Future()
        if not self._running():  # nothing would send it: say so at once
            answer.set_exception(RuntimeError("the node is shutting down"))
            return answer
        self._requests.put((request, answer))
        try:
            self._wake.trigger()
        except Exception as error:  # the node was destroyed since the check above
            answer.set_exception(RuntimeError(f"the node is shutting down ({error})"))
        return answer

    def _send_requests(self) -> None:
        # One wake-up may stand for several triggers: drain the queue.
        while True:
            try:
                request, answer = self._requests.get_nowait()
            except queue.Empty:
                return
            if answer.done():  # failed at once in _in_group
                continue
            try:
                sent = request()
            except Exception as error:  # e.g. the context shut down: the caller hears why
                answer.set_exception(error)
                continue
            sent.add_done_callback(lambda done, answer=answer: _relay(done, answer))


def wait_for(future: Future, timeout_s: float) -> bool:
    """Block this (worker) thread until `future` is done; the executor keeps spinning elsewhere."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    return done.wait(timeout_s)


def _wait_until(predicate: Callable[[], bool], timeout_s: float,
                changed: threading.Event) -> bool:
    end = time.monotonic() + timeout_s
    while True:
        changed.clear()  # before the check, so that an answer in between still wakes the wait
        if predicate():
            return True
        left = end - time.monotonic()
        if left <= 0.0:
            return False
        changed.wait(min(left, 0.2))  # also re-checks a predicate that no answer wakes


def _relay(done: Future, answer: Future) -> None:
    if done.cancelled():
        answer.cancel()
    elif done.exception() is not None:
        answer.set_exception(done.exception())
    else:
        answer.set_result(done.result())
