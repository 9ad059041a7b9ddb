"""The controller's REST handlers, one module per resource; ``meshpeer.controller.api``
puts their routes together in one table."""
