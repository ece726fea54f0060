// The user program image (guest/user/, linked at kUserImageVa and converted to
// a flat binary), embedded page-aligned so the kernel can map its frames
// read-only into every process without copying.
  .section .rodata.user_image, "a"
  .balign 4096
  .globl user_image_start
user_image_start:
  .incbin "guest_user.bin"
  .balign 4096
  .globl user_image_end
user_image_end:
