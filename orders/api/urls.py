from orders.api.api import api

# The library's patterns under the namespace it reverses its own names in ("api").
urlpatterns, _app, app_name = api.urls
