from django.urls import include, path

from accounts import views

# Not namespaced: django.contrib.auth's views reverse their own plain names
# ("login", "password_reset_done", ...), and settings.LOGIN_URL is "login".
urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("", include("django.contrib.auth.urls")),
]
