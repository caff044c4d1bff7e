# The pip workload's application: imports what requirements.txt installed.
import attr
import requests
import six


@attr.s
class Info:
    name = attr.ib()


print(Info(name=f"requests {requests.__version__}, six {six.__version__}"))
