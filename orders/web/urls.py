from django.urls import path

from orders.web import orders as views

app_name = "orders"

urlpatterns = [
    path("", views.order_list, name="list"),
    path("checkout/<slug:plan_slug>/", views.checkout, name="checkout"),
    path("webhooks/stripe/", views.stripe_webhook, name="stripe_webhook"),
    path("warren-ca.pem", views.ca_certificate, name="ca_certificate"),
    path("<uuid:public_id>/", views.detail, name="detail"),
    path("<uuid:public_id>/pay/", views.offline_checkout, name="offline_checkout"),
    path("<uuid:public_id>/success/", views.success, name="success"),
    path("<uuid:public_id>/checkout-cancelled/", views.cancelled, name="cancelled"),
    path("<uuid:public_id>/cancel/", views.cancel, name="cancel"),
    path("<uuid:public_id>/credentials/", views.credentials, name="credentials"),
    path("<uuid:public_id>/status/", views.status, name="status"),
    path("<uuid:public_id>/metrics/", views.metrics, name="metrics"),
    path("<uuid:public_id>/alarms/", views.alarm_add, name="alarm_add"),
    path("<uuid:public_id>/alarms/<int:alarm_id>/remove/", views.alarm_remove, name="alarm_remove"),
    path("<uuid:public_id>/console/<slug:action>/", views.console_action, name="console"),
    path("<uuid:public_id>/billing/", views.billing_portal, name="billing_portal"),
]
