from django.urls import path

from orders.web import catalogue as views

app_name = "store"

urlpatterns = [
    path("", views.pricing, name="pricing"),
    path("waitlist/<slug:plan_slug>/", views.join_waitlist, name="waitlist"),
]
