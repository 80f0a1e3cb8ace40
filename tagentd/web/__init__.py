"""The dashboard: a web page of runs, the broker, watched folders and the daemon, live, served locally.

A separate process (`python -m tagentd.web`) that the daemon starts and supervises (tagentd/app/web.py); the
daemon itself stays free of HTTP. This process is a client like any other: it asks the daemon over control.sock
(`AsyncClient`) and follows events.sock with one subscription that all browser tabs share (feed.py).

- `auth.py`: the login token and the gate every request passes (token, CSRF, Origin, security headers);
- `feed.py`: one events.sock subscription fanned out to the browsers' Server-Sent Events streams;
- `views.py`: what each page shows, shaped from the daemon's replies (pure);
- `dag.py`: a run's DAG as SVG, each step a `<g class="step" data-step=… data-state=…>` the page recolours;
- `api.py`: the JSON API and the actions; `app.py`: the Starlette app; `__main__.py`: the process;
- `static/`: the page itself (HTML, CSS, plain ES modules), package data: nothing is fetched from the internet.
"""
