"""Triangle-ID pass on a real OpenGL rasterizer: moderngl on a headless EGL context (Mesa's
llvmpipe on CPU machines).

Only the visibility pass runs here (which triangle covers each pixel centre, with the depth
test); barycentrics are recomputed in torch from the projected vertices afterwards, as
nvdiffrast's own second stage does, so gradients never need to cross OpenGL.

Row order is OpenGL's, which is nvdiffrast's: row 0 of the output is at clip-space y = -1.
"""
from __future__ import annotations

import numpy as np

_VERTEX = """
#version 330
in vec4 in_pos;
void main() { gl_Position = in_pos; }
"""
_FRAGMENT = """
#version 330
out int triangle_id;
void main() { triangle_id = gl_PrimitiveID + 1; }
"""


class ModernGLUnavailable(RuntimeError):
    """moderngl or a headless EGL context could not be created."""


class ModernGLTriangleIds:
    """Renders triangle IDs (triangle index + 1, 0 where empty) with the depth test.

    Raises:
        ModernGLUnavailable: moderngl is not installed or no EGL context can be made (install
            the `moderngl` package and Mesa's EGL, e.g. Debian's libegl1 and libgl1-mesa-dri).
    """

    def __init__(self):
        try:
            import moderngl
        except ImportError as e:
            raise ModernGLUnavailable("moderngl is not installed: pip install moderngl") from e
        try:
            self.ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as e:  # noqa: BLE001 - moderngl raises plain Exceptions here
            raise ModernGLUnavailable(
                f"no headless EGL context ({e}); install Mesa's EGL (Debian: libegl1 "
                "libgl1-mesa-dri) or use RasterizeTorchContext()") from e
        self.program = self.ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        self._fbo = None
        self._size = None
        self.renderer = self.ctx.info.get("GL_RENDERER", "?")

    def _framebuffer(self, height: int, width: int):
        if self._size != (height, width):
            if self._fbo is not None:
                self._fbo.release()
            color = self.ctx.texture((width, height), 1, dtype="i4")
            depth = self.ctx.depth_renderbuffer((width, height))
            self._fbo = self.ctx.framebuffer(color_attachments=[color], depth_attachment=depth)
            self._size = (height, width)
        return self._fbo

    def render(self, pos_clip: np.ndarray, tri: np.ndarray, height: int, width: int) -> np.ndarray:
        """One view.

        Args:
            pos_clip: (V,4) float32 clip-space positions. tri: (F,3) int vertex indices.
        Returns:
            (H,W) int32 triangle index + 1 (0 = empty), row 0 at clip y = -1.
        """
        import moderngl

        fbo = self._framebuffer(height, width)
        fbo.use()
        self.ctx.viewport = (0, 0, width, height)
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.disable(moderngl.CULL_FACE)
        fbo.color_attachments[0].write(np.zeros((height, width), dtype=np.int32).tobytes())
        fbo.clear(depth=1.0)
        vbo = self.ctx.buffer(np.ascontiguousarray(pos_clip, dtype=np.float32).tobytes())
        ibo = self.ctx.buffer(np.ascontiguousarray(tri, dtype=np.int32).tobytes())
        vao = self.ctx.vertex_array(self.program, [(vbo, "4f", "in_pos")], index_buffer=ibo,
                                    index_element_size=4)
        vao.render(moderngl.TRIANGLES)
        ids = np.frombuffer(fbo.read(components=1, dtype="i4"), dtype=np.int32)
        vao.release()
        vbo.release()
        ibo.release()
        return ids.reshape(height, width).copy()
