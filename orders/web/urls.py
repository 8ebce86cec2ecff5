from django.urls import path

from orders.web import billing, console, monitoring, orders

app_name = "orders"

urlpatterns = [
    path("", orders.order_list, name="list"),
    path("checkout/<slug:plan_slug>/", billing.checkout, name="checkout"),
    path("webhooks/stripe/", billing.stripe_webhook, name="stripe_webhook"),
    path("warren-ca.pem", orders.ca_certificate, name="ca_certificate"),
    path("<uuid:public_id>/", orders.detail, name="detail"),
    path("<uuid:public_id>/pay/", billing.offline_checkout, name="offline_checkout"),
    path("<uuid:public_id>/success/", billing.success, name="success"),
    path("<uuid:public_id>/checkout-cancelled/", billing.cancelled, name="cancelled"),
    path("<uuid:public_id>/cancel/", orders.cancel, name="cancel"),
    path("<uuid:public_id>/credentials/", orders.credentials, name="credentials"),
    path("<uuid:public_id>/status/", orders.status, name="status"),
    path("<uuid:public_id>/metrics/", monitoring.metrics, name="metrics"),
    path("<uuid:public_id>/alarms/", monitoring.alarm_add, name="alarm_add"),
    path(
        "<uuid:public_id>/alarms/<int:alarm_id>/remove/",
        monitoring.alarm_remove,
        name="alarm_remove",
    ),
    path("<uuid:public_id>/console/<slug:action>/", console.console_action, name="console"),
    path("<uuid:public_id>/billing/", billing.billing_portal, name="billing_portal"),
]
