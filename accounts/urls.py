from django.urls import include, path

from accounts import views

# Not namespaced: django.contrib.auth's views reverse their own plain names
# ("login", "password_reset_done", ...), and settings.LOGIN_URL is "login".
urlpatterns = [
    path("signup/", views.signup, name="signup"),
    # Before django.contrib.auth's urls: the same name and path, with the throttled form.
    path("login/", views.LoginView.as_view(), name="login"),
    path("", include("django.contrib.auth.urls")),
]
