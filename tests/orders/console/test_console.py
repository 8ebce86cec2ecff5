"""The console's services (orders/console/commands.py): commands into the outbox, the host's
outcomes applied through the event worker's entry point, the money side with Stripe's HTTP faked."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orders.console import commands as console
from orders.console import outcomes
from orders.console.commands import ConsoleError
from orders.core.provisioning import body_to_publish
from orders.models import Activity, ConsoleCommand, Instance, Order, OutboxMessage
from store.models import Plan
from tests.orders.console_support import (
    HOST,
    RUNTIME,
    FakeStripe,
    apply,
    install_fake_stripe,
    make_ready,
    outcome,
    ready_fields,
)
from vmbackend.protocol import messages

pytestmark = pytest.mark.django_db

Kind, Status = ConsoleCommand.Kind, ConsoleCommand.Status


def _plan(slug: str, *, memory_mb: int, disk_gb: int, cents: int, **extra: Any) -> Plan:
    return Plan.objects.create(
        slug=slug,
        name=slug.title(),
        memory_mb=memory_mb,
        vcpus=extra.pop("vcpus", 1),
        disk_gb=disk_gb,
        max_connections=100,
        max_queues=200,
        monthly_price_cents=cents,
        **extra,
    )


@pytest.fixture
def ready(instance: Instance) -> Instance:
    return make_ready(instance)


@pytest.fixture
def fake_stripe(monkeypatch: pytest.MonkeyPatch, settings: Any) -> FakeStripe:
    return install_fake_stripe(monkeypatch, settings)


@pytest.fixture
def bigger(db: None) -> Plan:
    return _plan("bigger", memory_mb=1024, disk_gb=8, cents=1900, vcpus=2)


def _commands_sent(instance: Instance) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(routing_key=f"host.{HOST}", instance=instance))


def _fresh(instance: Instance) -> Instance:
    return Instance.objects.select_related("order__plan").get(pk=instance.pk)


# -- restart -------------------------------------------------------------------------------------


def test_a_restart_goes_to_the_vms_host_with_its_request_id(ready: Instance) -> None:
    rid = uuid.uuid4()
    started = console.request_restart(order=ready.order, request_id=rid)

    assert started.new and started.command.status == Status.SENT
    [row] = _commands_sent(ready)
    assert row.body == messages.restart_vm_body(vm_id=ready.vm_id, request_id=rid)
    assert messages.parse(messages.encode(body_to_publish(row))).request_id == str(rid)
    assert outcomes.pending_command(ready) == started.command


def test_the_same_form_posted_twice_restarts_once(ready: Instance) -> None:
    rid = uuid.uuid4()
    first = console.request_restart(order=ready.order, request_id=rid)
    second = console.request_restart(order=ready.order, request_id=rid)

    assert (first.new, second.new) == (True, False)
    assert second.command.pk == first.command.pk
    assert len(_commands_sent(ready)) == 1
    assert Activity.objects.filter(kind=Activity.Kind.RESTART_REQUESTED).count() == 1


def test_a_second_action_waits_for_the_first(ready: Instance) -> None:
    console.request_restart(order=ready.order, request_id=uuid.uuid4())

    with pytest.raises(ConsoleError, match="Restart in progress"):
        console.request_password_rotation(order=ready.order, request_id=uuid.uuid4())
    assert len(_commands_sent(ready)) == 1


def test_the_database_holds_one_pending_command_per_server(ready: Instance) -> None:
    ConsoleCommand.objects.create(instance=ready, request_id=uuid.uuid4(), kind=Kind.RESTART)
    with pytest.raises(IntegrityError), transaction.atomic():
        ConsoleCommand.objects.create(instance=ready, request_id=uuid.uuid4(), kind=Kind.RESTART)


def test_a_restart_is_done_when_the_host_says_so(ready: Instance) -> None:
    rid = uuid.uuid4()
    console.request_restart(order=ready.order, request_id=rid)

    assert outcome(ready, rid, messages.RESTART_VM) == "applied"

    command = ConsoleCommand.objects.get(request_id=rid)
    assert command.status == Status.DONE and command.finished_at is not None
    assert Activity.objects.filter(order=ready.order, kind=Activity.Kind.RESTARTED).exists()
    # The host re-emits the outcome for a repeated message: nothing changes twice.
    assert outcome(ready, rid, messages.RESTART_VM) == "already_done"
    assert Activity.objects.filter(order=ready.order, kind=Activity.Kind.RESTARTED).count() == 1


def test_a_restart_is_done_when_the_server_is_ready_again(ready: Instance) -> None:
    rid = uuid.uuid4()
    console.request_restart(order=ready.order, request_id=rid)
    apply(ready, messages.INSTANCE_STOPPED)
    apply(ready, messages.INSTANCE_READY, **ready_fields(ready, RUNTIME))

    assert ConsoleCommand.objects.get(request_id=rid).status == Status.DONE


def test_a_restart_of_a_server_that_is_down_fails_with_the_reason(ready: Instance) -> None:
    rid = uuid.uuid4()
    console.request_restart(order=ready.order, request_id=rid)

    outcome(ready, rid, messages.RESTART_VM, failed="the VM is not running")

    command = ConsoleCommand.objects.get(request_id=rid)
    assert (command.status, command.reason) == (Status.FAILED, "the VM is not running")
    assert console.last_failure(ready) == command
    line = Activity.objects.get(order=ready.order, kind=Activity.Kind.ACTION_FAILED)
    assert line.message == "Restart failed: the VM is not running."


def test_nothing_is_sent_for_a_server_that_is_not_running(instance: Instance) -> None:
    with pytest.raises(ConsoleError, match="must be running"):
        console.request_restart(order=instance.order, request_id=uuid.uuid4())
    assert not ConsoleCommand.objects.exists()


def test_nothing_is_sent_while_the_host_restarts_a_crashed_server(ready: Instance) -> None:
    apply(ready, messages.INSTANCE_RESTARTING, reason="QEMU exited", attempt=1)

    with pytest.raises(ConsoleError, match="being restarted by its host"):
        console.request_restart(order=ready.order, request_id=uuid.uuid4())


def test_an_unanswered_command_gives_way_after_the_timeout(ready: Instance, settings) -> None:
    settings.CONSOLE_COMMAND_TIMEOUT = 60
    old = console.request_restart(order=ready.order, request_id=uuid.uuid4()).command
    ConsoleCommand.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(seconds=61)
    )

    console.request_restart(order=ready.order, request_id=uuid.uuid4())

    old.refresh_from_db()
    assert (old.status, old.reason) == (Status.FAILED, outcomes.TIMED_OUT)


def test_an_outcome_nobody_asked_for_changes_nothing(ready: Instance) -> None:
    assert outcome(ready, uuid.uuid4(), messages.RESTART_VM) == "unknown_command"
    assert not ConsoleCommand.objects.exists()


def test_an_outcome_without_a_request_id_changes_nothing(ready: Instance) -> None:
    console.request_restart(order=ready.order, request_id=uuid.uuid4())
    result = apply(ready, messages.INSTANCE_COMMAND_DONE, command="restart-vm")

    assert result == "unknown_command"
    assert outcomes.pending_command(ready) is not None


# -- password rotation ---------------------------------------------------------------------------


def test_a_rotation_stores_no_password_in_the_outbox(ready: Instance) -> None:
    old_password = ready.admin_password
    rid = uuid.uuid4()
    command = console.request_password_rotation(order=ready.order, request_id=rid).command

    [row] = _commands_sent(ready)
    assert row.body["command"] == messages.SET_ADMIN_PASSWORD
    assert row.body["options"]["admin"] == {"username": ready.admin_username, "password": ""}
    # The relay fills in the new password (decrypted only for the publish).
    published = messages.parse(messages.encode(body_to_publish(row)))
    assert isinstance(published, messages.SetAdminPassword)
    assert published.password == command.new_password != old_password
    assert published.request_id == str(rid)
    assert command.new_password not in command.new_password_encrypted
    # Until the host confirms, the old password stays the instance's.
    assert _fresh(ready).admin_password == old_password


def test_a_confirmed_rotation_swaps_the_password_and_shows_it_once(ready: Instance) -> None:
    rid = uuid.uuid4()
    new_password = console.request_password_rotation(
        order=ready.order, request_id=rid
    ).command.new_password

    outcome(ready, rid, messages.SET_ADMIN_PASSWORD)

    fresh = _fresh(ready)
    assert fresh.admin_password == new_password
    command = ConsoleCommand.objects.get(request_id=rid)
    assert (command.status, command.new_password_encrypted) == (Status.DONE, "")
    assert console.unseen_password(fresh) == command
    console.mark_password_shown(instance=fresh)
    assert console.unseen_password(fresh) is None
    line = Activity.objects.get(order=ready.order, kind=Activity.Kind.PASSWORD_ROTATED)
    assert new_password not in line.message


def test_a_refused_rotation_keeps_the_old_password(ready: Instance) -> None:
    old_password = ready.admin_password
    rid = uuid.uuid4()
    console.request_password_rotation(order=ready.order, request_id=rid)

    outcome(ready, rid, messages.SET_ADMIN_PASSWORD, failed="the VM is not running")

    assert _fresh(ready).admin_password == old_password
    command = ConsoleCommand.objects.get(request_id=rid)
    assert (command.status, command.new_password_encrypted) == (Status.FAILED, "")
    # A redelivered outbox row now sets the current password again: no change on the VM.
    [row] = _commands_sent(ready)
    assert body_to_publish(row)["options"]["admin"]["password"] == old_password


def test_a_late_confirmation_after_the_timeout_still_swaps_the_password(
    ready: Instance, settings
) -> None:
    settings.CONSOLE_COMMAND_TIMEOUT = 60
    rid = uuid.uuid4()
    command = console.request_password_rotation(order=ready.order, request_id=rid).command
    ConsoleCommand.objects.filter(pk=command.pk).update(
        created_at=timezone.now() - timedelta(seconds=61)
    )
    console.request_restart(order=ready.order, request_id=uuid.uuid4())  # gives up on it

    outcome(ready, rid, messages.SET_ADMIN_PASSWORD)

    assert _fresh(ready).admin_password == command.new_password  # what the VM now has
    assert ConsoleCommand.objects.get(pk=command.pk).status == Status.DONE


# -- plan changes --------------------------------------------------------------------------------


def test_the_plan_choice_offers_the_same_version_and_refuses_a_smaller_disk(
    ready: Instance, bigger: Plan
) -> None:
    tiny_disk = _plan("tiny-disk", memory_mb=256, disk_gb=2, cents=500)
    _plan("other-version", memory_mb=1024, disk_gb=8, cents=1900, rabbitmq_version="3.10")

    choices = {c.plan.slug: c for c in console.plan_choices(ready.order, ready)}

    assert set(choices) == {"orders-test-small", "bigger", "tiny-disk"}
    assert choices["orders-test-small"].current and not choices["orders-test-small"].allowed
    assert choices["bigger"].allowed
    assert "smaller than your server's (4 GB)" in choices["tiny-disk"].reason
    assert tiny_disk.pk and not choices["tiny-disk"].allowed


def test_a_downgrade_that_would_shrink_the_disk_is_refused_before_anything_is_sent(
    ready: Instance,
) -> None:
    tiny_disk = _plan("tiny-disk", memory_mb=256, disk_gb=2, cents=500)

    with pytest.raises(ConsoleError, match="a disk can only grow"):
        console.request_plan_change(order=ready.order, request_id=uuid.uuid4(), plan=tiny_disk)

    assert not ConsoleCommand.objects.exists() and _commands_sent(ready) == []


def test_the_disk_compared_is_the_servers_own_not_its_plans(ready: Instance) -> None:
    Instance.objects.filter(pk=ready.pk).update(disk_gb=16)  # grown by an earlier change
    same_disk = _plan("same-disk", memory_mb=1024, disk_gb=8, cents=1900)

    with pytest.raises(ConsoleError, match=r"smaller than your server's \(16 GB\)"):
        console.request_plan_change(order=ready.order, request_id=uuid.uuid4(), plan=same_disk)


def test_a_plan_of_another_version_is_refused(ready: Instance) -> None:
    other = _plan("other-version", memory_mb=1024, disk_gb=8, cents=1900, rabbitmq_version="3.10")
    with pytest.raises(ConsoleError, match="not available"):
        console.request_plan_change(order=ready.order, request_id=uuid.uuid4(), plan=other)


def test_an_offline_plan_change_resizes_and_applies_when_done(
    ready: Instance, bigger: Plan
) -> None:
    rid = uuid.uuid4()
    command = console.request_plan_change(order=ready.order, request_id=rid, plan=bigger).command

    [row] = _commands_sent(ready)
    assert row.body == messages.resize_vm_body(
        vm_id=ready.vm_id, request_id=rid, memory_mb=1024, vcpus=2, disk_gb=8
    )
    assert (command.from_plan, command.to_plan, command.billing) == (ready.order.plan, bigger, "")
    assert Order.objects.get(pk=ready.order.pk).plan != bigger  # not before the host did it

    outcome(ready, rid, messages.RESIZE_VM, memory_mb=1024, vcpus=2, disk_gb=8)

    fresh = _fresh(ready)
    assert fresh.order.plan == bigger
    assert (fresh.memory_mb, fresh.vcpus, fresh.disk_gb) == (1024, 2, 8)
    line = Activity.objects.get(order=ready.order, kind=Activity.Kind.PLAN_CHANGED)
    assert line.message == ("Plan changed from Test small ($9.00/month) to Bigger ($19.00/month).")


def test_a_resize_the_host_cannot_fit_keeps_the_plan(ready: Instance, bigger: Plan) -> None:
    rid = uuid.uuid4()
    console.request_plan_change(order=ready.order, request_id=rid, plan=bigger)

    outcome(ready, rid, messages.RESIZE_VM, failed="not enough memory on the host")

    fresh = _fresh(ready)
    assert fresh.order.plan.slug == "orders-test-small"
    assert (fresh.memory_mb, fresh.disk_gb) == (512, 4)
    line = Activity.objects.get(order=ready.order, kind=Activity.Kind.ACTION_FAILED)
    assert (
        line.message == "Plan change failed: not enough memory on the host. Your plan is unchanged."
    )


def test_a_past_due_order_cannot_change_plan(ready: Instance, bigger: Plan) -> None:
    Order.objects.filter(pk=ready.order.pk).update(status=Order.Status.PAST_DUE)
    with pytest.raises(ConsoleError, match="must be running"):
        console.request_plan_change(order=ready.order, request_id=uuid.uuid4(), plan=bigger)


# -- plan changes with Stripe (Stripe's HTTP side faked) ------------------------------------------


def _subscribed(order: Order, fake: Any) -> None:
    Order.objects.filter(pk=order.pk).update(
        stripe_subscription_id="sub_123", stripe_customer_id="cus_123"
    )
    order.stripe_subscription_id, order.stripe_customer_id = "sub_123", "cus_123"
    subscription = {
        "id": "sub_123",
        "object": "subscription",
        "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item"}]},
    }
    fake.answer("GET", "/v1/subscriptions/sub_123", subscription)
    fake.answer("POST", "/v1/subscriptions/sub_123", subscription)


def test_with_stripe_the_price_changes_with_proration_before_the_resize(
    ready: Instance, bigger: Plan, fake_stripe: Any
) -> None:
    Plan.objects.filter(pk=bigger.pk).update(stripe_price_id="price_bigger")
    bigger.refresh_from_db()
    _subscribed(ready.order, fake_stripe)
    rid = uuid.uuid4()

    command = console.request_plan_change(order=ready.order, request_id=rid, plan=bigger).command

    [update] = [c for c in fake_stripe.calls if c["method"] == "POST"]
    assert update["path"] == "/v1/subscriptions/sub_123"
    assert update["form"] == {
        "items[0][id]": "si_1",
        "items[0][price]": "price_bigger",
        "proration_behavior": "create_prorations",
    }
    assert update["idempotency_key"] == f"plan-{rid}"
    assert command.billing == ConsoleCommand.Billing.CHANGED
    assert len(_commands_sent(ready)) == 1


def test_when_stripe_refuses_nothing_is_sent(
    ready: Instance, bigger: Plan, fake_stripe: Any
) -> None:
    Plan.objects.filter(pk=bigger.pk).update(stripe_price_id="price_bigger")
    bigger.refresh_from_db()
    _subscribed(ready.order, fake_stripe)
    fake_stripe.answer(
        "POST",
        "/v1/subscriptions/sub_123",
        {"error": {"type": "card_error", "code": "card_declined", "message": "declined"}},
        status=402,
    )

    with pytest.raises(ConsoleError, match="your plan is unchanged"):
        console.request_plan_change(order=ready.order, request_id=uuid.uuid4(), plan=bigger)

    assert not ConsoleCommand.objects.exists() and _commands_sent(ready) == []


def test_while_stripe_answers_the_slot_is_held(
    ready: Instance, bigger: Plan, fake_stripe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    Plan.objects.filter(pk=bigger.pk).update(stripe_price_id="price_bigger")
    bigger.refresh_from_db()
    _subscribed(ready.order, fake_stripe)
    real = console.change_subscription_price
    seen: list[Exception] = []

    def change_while_another_tab_submits(**kwargs: Any) -> None:
        try:  # the second tab, while the first one's Stripe call is under way
            console.request_plan_change(order=ready.order, request_id=uuid.uuid4(), plan=bigger)
        except ConsoleError as exc:
            seen.append(exc)
        real(**kwargs)

    monkeypatch.setattr(console, "change_subscription_price", change_while_another_tab_submits)

    console.request_plan_change(order=ready.order, request_id=uuid.uuid4(), plan=bigger)

    assert [str(e) for e in seen] == ["Plan change in progress; please wait for it to finish."]
    assert len([c for c in fake_stripe.calls if c["method"] == "POST"]) == 1


def test_a_server_that_stops_while_stripe_answers_gets_its_price_back(
    ready: Instance,
    bigger: Plan,
    fake_stripe: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    Plan.objects.filter(pk=bigger.pk).update(stripe_price_id="price_bigger")
    Plan.objects.filter(pk=ready.order.plan.pk).update(stripe_price_id="price_small")
    bigger.refresh_from_db()
    _subscribed(ready.order, fake_stripe)
    real = console.change_subscription_price

    def change_then_stop(**kwargs: Any) -> None:
        real(**kwargs)
        Order.objects.filter(pk=ready.order.pk).update(status=Order.Status.PAST_DUE)

    monkeypatch.setattr(console, "change_subscription_price", change_then_stop)
    rid = uuid.uuid4()

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ConsoleError):
        console.request_plan_change(order=ready.order, request_id=rid, plan=bigger)

    updates = [c for c in fake_stripe.calls if c["method"] == "POST"]
    assert [u["form"]["items[0][price]"] for u in updates] == ["price_bigger", "price_small"]
    command = ConsoleCommand.objects.get(request_id=rid)
    assert (command.status, command.billing) == (Status.FAILED, ConsoleCommand.Billing.REVERTED)
    assert _commands_sent(ready) == []


def test_a_change_that_timed_out_while_stripe_answered_goes_back(
    ready: Instance, bigger: Plan, fake_stripe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    Plan.objects.filter(pk=bigger.pk).update(stripe_price_id="price_bigger")
    Plan.objects.filter(pk=ready.order.plan.pk).update(stripe_price_id="price_small")
    bigger.refresh_from_db()
    _subscribed(ready.order, fake_stripe)
    real = console.change_subscription_price
    rid = uuid.uuid4()

    def change_too_slowly(**kwargs: Any) -> None:
        real(**kwargs)
        ConsoleCommand.objects.filter(request_id=rid).update(
            status=Status.FAILED, reason=outcomes.TIMED_OUT
        )

    monkeypatch.setattr(console, "change_subscription_price", change_too_slowly)

    with pytest.raises(ConsoleError, match="took too long"):
        console.request_plan_change(order=ready.order, request_id=rid, plan=bigger)

    updates = [c for c in fake_stripe.calls if c["method"] == "POST"]
    assert [u["form"]["items[0][price]"] for u in updates] == ["price_bigger", "price_small"]
    assert updates[1]["idempotency_key"] == f"plan-revert-late-{rid}"
    assert _commands_sent(ready) == []


def test_a_failed_resize_puts_the_old_price_back(
    ready: Instance, bigger: Plan, fake_stripe: Any, django_capture_on_commit_callbacks: Any
) -> None:
    Plan.objects.filter(pk=bigger.pk).update(stripe_price_id="price_bigger")
    Plan.objects.filter(pk=ready.order.plan.pk).update(stripe_price_id="price_small")
    bigger.refresh_from_db()
    ready.order.plan.refresh_from_db()
    _subscribed(ready.order, fake_stripe)
    rid = uuid.uuid4()
    console.request_plan_change(order=ready.order, request_id=rid, plan=bigger)

    with django_capture_on_commit_callbacks(execute=True):
        outcome(ready, rid, messages.RESIZE_VM, failed="not enough memory on the host")

    updates = [c for c in fake_stripe.calls if c["method"] == "POST"]
    assert [u["form"]["items[0][price]"] for u in updates] == ["price_bigger", "price_small"]
    assert updates[1]["idempotency_key"] == f"plan-revert-{rid}"
    assert ConsoleCommand.objects.get(request_id=rid).billing == ConsoleCommand.Billing.REVERTED


def test_a_revert_stripe_refuses_is_left_for_staff(
    ready: Instance, bigger: Plan, fake_stripe: Any, django_capture_on_commit_callbacks: Any
) -> None:
    Plan.objects.filter(pk=bigger.pk).update(stripe_price_id="price_bigger")
    bigger.refresh_from_db()
    _subscribed(ready.order, fake_stripe)
    rid = uuid.uuid4()
    console.request_plan_change(order=ready.order, request_id=rid, plan=bigger)
    fake_stripe.answer(
        "POST", "/v1/subscriptions/sub_123", {"error": {"type": "api_error"}}, status=500
    )

    with django_capture_on_commit_callbacks(execute=True):
        outcome(ready, rid, messages.RESIZE_VM, failed="disk could not grow")

    command = ConsoleCommand.objects.get(request_id=rid)
    assert command.billing == ConsoleCommand.Billing.REVERT_FAILED


# -- what is running -----------------------------------------------------------------------------


def test_ready_records_what_runs_and_since_when(ready: Instance) -> None:
    assert (ready.rabbitmq_version, ready.erlang_version, ready.node_name) == (
        "4.0.9",
        "27.3.4",
        "rabbit@warren-vm",
    )
    assert ready.runtime_at is not None
    assert (ready.memory_mb, ready.vcpus, ready.disk_gb) == (512, 1, 4)
    assert ready.created_rabbitmq_version == ready.order.plan.rabbitmq_version


def test_a_ready_without_runtime_keeps_what_was_known(ready: Instance) -> None:
    apply(ready, messages.INSTANCE_READY, **ready_fields(ready, runtime=None))
    assert _fresh(ready).rabbitmq_version == "4.0.9"


# -- any sequence of outcomes (Hypothesis) -------------------------------------------------------

_OUTCOME = st.tuples(
    st.sampled_from(["done", "failed"]),
    st.sampled_from([0, 1, 2, "unknown"]),  # which command's request id (or one nobody sent)
    st.sampled_from([messages.RESTART_VM, messages.SET_ADMIN_PASSWORD, messages.RESIZE_VM, "x"]),
)


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.permutations(["password", "plan", "restart"]),
    outcomes=st.lists(_OUTCOME, max_size=8),
)
def test_any_outcomes_in_any_order_leave_a_consistent_server(order_factory, kinds, outcomes):
    """Two commands finished, one pending; then whatever outcomes a host reports (repeated, for
    finished commands, for unknown ones, naming the wrong command): a finished command never
    changes again, the pending one finishes once (as the first outcome for it says), and the
    password and plan are what the done commands made them."""
    instance = make_ready(order_factory())
    order = instance.order
    old_plan, old_password = order.plan, instance.admin_password
    bigger, _ = Plan.objects.get_or_create(
        slug="hyp-bigger",
        defaults={
            "name": "Hyp bigger",
            "memory_mb": 1024,
            "vcpus": 2,
            "disk_gb": 8,
            "max_connections": 100,
            "max_queues": 200,
            "monthly_price_cents": 1900,
        },
    )
    start = {
        "password": lambda rid: console.request_password_rotation(order=order, request_id=rid),
        "plan": lambda rid: console.request_plan_change(order=order, request_id=rid, plan=bigger),
        "restart": lambda rid: console.request_restart(order=order, request_id=rid),
    }
    commands = []
    for position, kind in enumerate(kinds):
        command = start[kind](uuid.uuid4()).command
        commands.append(command)
        if position < 2:
            outcome(instance, command.request_id, command.kind, memory_mb=1024, vcpus=2, disk_gb=8)
    pending = commands[2]
    new_password = next(c.new_password for c in commands if c.kind == Kind.ROTATE_PASSWORD)
    first_for_pending = None
    for result, which, command_name in outcomes:
        rid = uuid.uuid4() if which == "unknown" else commands[which].request_id
        if which == 2 and first_for_pending is None:
            first_for_pending = result
        failed = "the VM is stopped" if result == "failed" else ""
        got = outcome(
            instance, rid, command_name, failed=failed, memory_mb=1024, vcpus=2, disk_gb=8
        )
        assert got in {"applied", "unknown_command", "already_done", "already_failed"}

    statuses = {c.pk: c.status for c in ConsoleCommand.objects.filter(instance=instance)}
    assert statuses[commands[0].pk] == statuses[commands[1].pk] == Status.DONE
    expected = {None: Status.SENT, "done": Status.DONE, "failed": Status.FAILED}
    assert statuses[pending.pk] == expected[first_for_pending]
    rotated = Status.DONE in (statuses[c.pk] for c in commands if c.kind == Kind.ROTATE_PASSWORD)
    resized = Status.DONE in (statuses[c.pk] for c in commands if c.kind == Kind.CHANGE_PLAN)
    fresh = _fresh(instance)
    assert fresh.admin_password == (new_password if rotated else old_password)
    assert fresh.order.plan == (bigger if resized else old_plan)
    done_lines = Activity.objects.filter(
        order=order,
        kind__in=(Activity.Kind.PASSWORD_ROTATED, Activity.Kind.PLAN_CHANGED),
    ).count()
    assert done_lines == int(rotated) + int(resized)


@pytest.fixture
def order_factory(plan, customer):
    from orders.core.provisioning import request_provisioning

    def make() -> Instance:
        with transaction.atomic():
            fresh = Order.objects.create(user=customer, plan=plan)
            made = request_provisioning(order=Order.objects.select_for_update().get(pk=fresh.pk))
        assert made is not None
        return made

    return make


# -- staff --------------------------------------------------------------------------------------


def test_staff_see_commands_and_the_timeline_but_never_a_pending_password(
    admin_client, ready: Instance
) -> None:
    from django.urls import reverse

    command = console.request_password_rotation(order=ready.order, request_id=uuid.uuid4()).command
    ConsoleCommand.objects.filter(pk=command.pk).update(
        billing=ConsoleCommand.Billing.REVERT_FAILED
    )

    listing = admin_client.get(
        reverse("admin:orders_consolecommand_changelist"), {"billing__exact": "revert_failed"}
    )
    detail = admin_client.get(reverse("admin:orders_consolecommand_change", args=[command.pk]))
    timeline = admin_client.get(reverse("admin:orders_activity_changelist"))

    assert str(command.request_id) in detail.content.decode()
    assert str(ready.public_id) in listing.content.decode()
    for page in (listing, detail):
        assert command.new_password not in page.content.decode()
        assert command.new_password_encrypted not in page.content.decode()
    assert "You asked for a new admin password." in timeline.content.decode()
    # No lookup through the secret column (an oracle).
    oracle = admin_client.get(
        reverse("admin:orders_consolecommand_changelist"),
        {"new_password_encrypted__startswith": "g"},
    )
    assert oracle.status_code in (302, 400) or "error" in oracle.content.decode().lower()


# -- through the real broker and the event worker ------------------------------------------------


def test_a_refused_rotation_arrives_through_the_broker_and_keeps_the_password(
    ready: Instance, amqp: Any, orders_amqp_url: str
) -> None:
    import pika

    from orders.messaging.consumer import EventConsumer
    from tests.orders.console_support import event_body

    old_password = ready.admin_password
    rid = uuid.uuid4()
    console.request_password_rotation(order=ready.order, request_id=rid)
    failed = event_body(
        ready,
        messages.INSTANCE_COMMAND_FAILED,
        command=messages.SET_ADMIN_PASSWORD,
        request_id=str(rid),
        reason="the VM is down; try again when it is running",
    )
    for _ in range(2):  # delivered twice: applied once
        amqp.basic_publish(
            "warren.events",
            failed["type"],
            messages.encode_event(failed),
            pika.BasicProperties(content_type="application/json", delivery_mode=2, user_id="guest"),
        )

    counts = EventConsumer(url=orders_amqp_url, idle_timeout=0.3).run(once=True)

    assert counts == {"applied": 1, "stale": 1}
    command = ConsoleCommand.objects.get(request_id=rid)
    assert (command.status, command.reason) == (
        Status.FAILED,
        "the VM is down; try again when it is running",
    )
    assert _fresh(ready).admin_password == old_password
    assert Activity.objects.filter(order=ready.order, kind=Activity.Kind.ACTION_FAILED).count() == 1
