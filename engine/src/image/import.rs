//! Image import (OCI layout and docker save tarballs).
